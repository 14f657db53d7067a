"""Topic names, in one place (ARCHITECTURE §3). Every message key is the run id."""

JOBS_HIGH = "node.jobs.high"
JOBS_NORMAL = "node.jobs.normal"
JOBS_LOW = "node.jobs.low"
JOB_LANES = (JOBS_HIGH, JOBS_NORMAL, JOBS_LOW)  # drained in this order
RESULTS = "node.results"
CANCELS = "node.cancels"  # broadcast: every worker sees every cancel

# consumer groups
WORKERS = "workers"  # of the job lanes
COORDINATORS = "coordinators"  # of the results


def jobs_topic(priority: str) -> str:
    return f"node.jobs.{priority}"
