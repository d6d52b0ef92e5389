"""Where the real TaskWeb release data lies: `../shared/data/taskweb` beside the repository.

Tests that read it skip when it is absent (a clone without `../shared`)."""
import os

TASKWEB_ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                                             "shared", "data", "taskweb"))
TASKWEB_TASKS = os.path.join(TASKWEB_ROOT, "tasks")
