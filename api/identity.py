"""Who is calling: the `CurrentUser` dependency every route but GET /health declares.

`Caller.owns` is the one ownership rule: a caller acts on an object when it is theirs,
or when they are an admin. Objects of other users are answered 404 (never 403), so that
an id does not reveal that it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request


@dataclass(frozen=True)
class Caller:
    username: str
    admin: bool = False

    def owns(self, owner: str | None) -> bool:
        return self.admin or (owner is not None and owner == self.username)


async def current_user(request: Request) -> Caller:
    """The authenticated caller (401 without a valid token)."""
    raise NotImplementedError("identity: implemented by the tokens change")


CurrentUser = Annotated[Caller, Depends(current_user)]
