"""Tools that run the whole system on one machine: embedded Postgres and Redis, the process
stack (sandbox, relays, workers, beat, Flower) and the demo. For `make demo`, the tests and
the benchmarks; nothing in production imports them.
"""
