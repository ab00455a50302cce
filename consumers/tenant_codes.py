"""Tenant ids as small integer codes, each with its count of sessions (the store's 4-byte tenant index).

A session keeps its tenant's code, not its name. A code is freed with the tenant's last session and
reused by the next new tenant; when most codes are free the store renumbers them densely, so memory
follows the live tenants down after a flood of tenants (consumers/store.py).
"""

from __future__ import annotations


class TenantCodes:
    """The names by code, the codes by name, the sessions per code, and the free codes."""

    __slots__ = ("codes", "free", "names", "refs")

    def __init__(self) -> None:
        self.names: list[str] = []  # by code; "" for a free code
        self.codes: dict[str, int] = {}  # live tenants only
        self.refs: list[int] = []  # sessions per code
        self.free: list[int] = []

    def __len__(self) -> int:
        """Live tenants: those with at least one session."""
        return len(self.codes)

    def acquire(self, tenant_id: str) -> int:
        """The tenant's code (a new or freed one for a tenant without sessions), counting one more session."""
        code = self.codes.get(tenant_id)
        if code is None:
            code = self._new(tenant_id)
        self.refs[code] += 1
        return code

    def release(self, code: int) -> None:
        """One session of the tenant fewer; the code is freed with its last one."""
        refs = self.refs[code] - 1
        self.refs[code] = refs
        if not refs:
            del self.codes[self.names[code]]
            self.names[code] = ""
            self.free.append(code)

    def sparse(self, min_codes: int, factor: int) -> bool:
        """Whether at least ``min_codes`` codes exist and fewer than 1/``factor`` of them are live."""
        return len(self.names) >= min_codes and len(self.codes) * factor < len(self.names)

    def renumber(self) -> dict[int, int]:
        """Gives the live tenants dense codes again; the old code -> new code map, for the sessions."""
        remap: dict[int, int] = {}
        names: list[str] = []
        refs: list[int] = []
        for tenant, old in self.codes.items():
            remap[old] = len(names)
            names.append(tenant)
            refs.append(self.refs[old])
        self.names, self.refs, self.free = names, refs, []
        self.codes = {tenant: code for code, tenant in enumerate(names)}
        return remap

    def _new(self, tenant_id: str) -> int:
        if self.free:
            code = self.free.pop()
            self.names[code] = tenant_id
            self.refs[code] = 0
        else:
            code = len(self.names)
            self.names.append(tenant_id)
            self.refs.append(0)
        self.codes[tenant_id] = code
        return code
