"""The registries of the library's extension points (the solvers, the score networks, the
model families): one shape for all three. ``register`` adds an entry (a plugin's), ``unregister``
removes it (a built-in one is registered again as it was), ``get`` names the choices when a
name is unknown."""

from __future__ import annotations


class Registry:
    """Entries with a ``name``, by name (``entries``, in registration order)."""

    def __init__(self, what: str, error: type[Exception]):
        self.what, self.error = what, error
        self.entries: dict = {}
        self.builtin: dict = {}

    def register(self, entry, replace: bool = False, builtin: bool = False):
        """Add ``entry`` (``replace``: over one of the same name; ``builtin``: one of the
        library's own); returns it."""
        if entry.name in self.entries and not replace:
            raise self.error(f"a {self.what} named {entry.name!r} is registered already")
        self.entries[entry.name] = entry
        if builtin:
            self.builtin[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove a plugin's entry (a built-in one is registered again as it was)."""
        self.entries.pop(name, None)
        if name in self.builtin:
            self.entries[name] = self.builtin[name]

    def get(self, name: str):
        if name not in self.entries:
            raise self.error(
                f"unknown {self.what} {name!r}; choose one of {', '.join(self.entries)} (a "
                "plugin's? load it with --plugins)"
            )
        return self.entries[name]
