"""Load testing tools for sait-serve: open-loop generator, overload experiment, soak.

Run `python -m bench.loadgen --help`. Modules: arrivals (schedules), scenario (dial mixes),
payloads (request bodies), client (one request, both APIs), driver (schedulers), report
(numbers and files), session (one run), server (start a server subprocess), overload, soak.
"""
