"""Topic names, in one place (ARCHITECTURE §3). Every message key is the run id."""

JOBS_HIGH = "node.jobs.high"
JOBS_NORMAL = "node.jobs.normal"
JOBS_LOW = "node.jobs.low"
JOB_LANES = (JOBS_HIGH, JOBS_NORMAL, JOBS_LOW)  # drained in this order
RESULTS = "node.results"
CANCELS = "node.cancels"  # broadcast: every worker sees every cancel
# every committed event, one message per transition of a run (its events in seq order),
# published while ENABLE_PROJECTIONS is on
EVENTS = "workflow.events"

# consumer groups
WORKERS = "workers"  # of the job lanes
COORDINATORS = "coordinators"  # of the results
PROJECTORS = "projectors"  # of the events


def jobs_topic(priority: str) -> str:
    return f"node.jobs.{priority}"
