"""riskd's tests; a package so that tests and scripts import `tests.support`."""
