import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("SCORESOLVE_TEST_THREADS", "1")))

settings.register_profile(
    "ci", derandomize=True, max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# mutation runs (benchmarks/mutation/run.sh): every surviving mutant reruns its tests, so fewer examples
settings.register_profile(
    "mutation", derandomize=True, max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "ci"))
