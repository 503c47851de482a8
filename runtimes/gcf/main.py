"""Source entry point for `gcloud functions deploy ... --entry-point infer`: Cloud Functions loads
main.py from the deployed source directory, and the function itself lives in the zeroserve package."""

from zeroserve_runtime.functions.gcf import infer

__all__ = ["infer"]
