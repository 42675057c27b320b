"""Forms: CSRF by double submit, and the registry token that comes with a change.

Every page sets a random `mlbus_csrf` cookie (SameSite=Strict, HttpOnly) once
and puts the same value in a hidden field of each form; a POST whose field does
not equal its cookie is refused before anything else is read. Another site can
neither read the cookie nor make the browser send it (SameSite=Strict), so it
cannot forge the pair.

Pages are read-only: a promotion or a rollback needs the registry's bearer
token, typed into the form by the person and handed to the registry in that
call's metadata — never stored, logged or rendered back.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

CSRF_COOKIE = "mlbus_csrf"
CSRF_FIELD = "csrf_token"
CSRF_REFUSED = "refused: the form's CSRF token did not match (reload the page and try again)"
"""What a page says (403) when `checked_form` refused the form."""


def csrf_token(request: Request) -> str:
    """This browser's token: the cookie's value, or a new one (set by `remember_csrf`)."""
    existing = request.cookies.get(CSRF_COOKIE, "")
    if len(existing) == 43:  # token_urlsafe(32)
        return existing
    made: str = request.state.__dict__.setdefault("new_csrf", secrets.token_urlsafe(32))
    return made


def remember_csrf(request: Request, response: Response) -> None:
    """Set the cookie when this request made a new token."""
    made = request.state.__dict__.get("new_csrf")
    if made:
        response.set_cookie(CSRF_COOKIE, made, httponly=True, samesite="strict", path="/")


def csrf_ok(request: Request, submitted: object) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return (
        isinstance(submitted, str)
        and len(cookie) == 43
        and hmac.compare_digest(cookie.encode(), submitted.encode())
    )


async def checked_form(request: Request) -> FormData | None:
    """The posted form, or None when its CSRF field does not match the cookie (refuse it)."""
    form = await request.form()
    return form if csrf_ok(request, form.get(CSRF_FIELD)) else None
