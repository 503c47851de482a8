"""The same model and protocol as managed functions: an AWS Lambda handler (behind a function URL) and a
Google Cloud Function, both answering the Open Inference Protocol v2 REST surface of the Zeroserve
runtime, so `zeroserve bench` can compare self-hosted and managed serving on identical requests."""
