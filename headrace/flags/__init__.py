"""Feature flags of the migration path (ARCHITECTURE §4): definitions and the watcher."""

from headrace.flags.definitions import FLAGS, Flag, FlagValue, FlagValues, initial, parse
from headrace.flags.watcher import FlagWatcher

__all__ = ["FLAGS", "Flag", "FlagValue", "FlagValues", "FlagWatcher", "initial", "parse"]
