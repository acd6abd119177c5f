"""The parts of `tools/bench.py`: constants (`common`), the client scenarios that run
inside the namespace (`clients`), the servers on both sides (`servers`), the run of
scenarios on both sides (`run`) and the report (`report`)."""
