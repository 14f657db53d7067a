"""Feature flags of the migration path (ARCHITECTURE §4): definitions and the watcher."""

from headrace.flags.definitions import FLAGS, Flag, FlagValue, initial, parse
from headrace.flags.watcher import FlagWatcher

__all__ = ["FLAGS", "Flag", "FlagValue", "FlagWatcher", "initial", "parse"]
