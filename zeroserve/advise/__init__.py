"""`zeroserve advise`: the cheapest serving configuration that meets a latency target.

config: the advise file; profile: the model measured in the real runtime under real CPU limits;
simulate: the same arrivals through each platform's scaling; pricing: what each configuration costs;
recommend: ranking, trade-offs and the winner's settings; validate: predictions checked with a real
`zeroserve bench` run; report: the HTML report.
"""
