"""The HTTP API (aiohttp), assembled: who asks in auth.py, what in validate.py, the handlers in
routes.py (and admin_routes.py on the admin listener only), answers with results in results.py.

Every error is JSON naming the field and the limit; a bad request never stops the daemon."""
from __future__ import annotations

from aiohttp import web

from ..integration import SlurmIntegration
from .admin_routes import admin_routes
from .answers import AnswerBudget
from .auth import admin_only
from .http import ADMIN, ANSWERS, HOOKS, PARSER, SCHEDULER, errors_middleware
from .parsing import TemplateParser
from .routes import not_admin_listener, routes
from .scheduler import Scheduler


def make_app(sch: Scheduler, *, admin: bool = False, hooks: SlurmIntegration | None = None,
             parser: TemplateParser | None = None, answers: AnswerBudget | None = None) -> web.Application:
    middlewares = [errors_middleware, admin_only] if admin else [errors_middleware]
    app = web.Application(client_max_size=sch.config.max_body_bytes, middlewares=middlewares)
    app[SCHEDULER] = sch
    app[ADMIN] = admin
    app[HOOKS] = hooks if hooks is not None else SlurmIntegration()
    app[PARSER] = parser or TemplateParser(timeout_s=sch.config.parse_timeout_s,
                                           memory_bytes=sch.config.parse_memory_bytes)
    app[ANSWERS] = answers or AnswerBudget(sch.config.max_answer_bytes)
    app.add_routes(routes)
    if admin:
        app.add_routes(admin_routes)
    else:
        app.router.add_route("*", "/v1/admin/{tail:.*}", not_admin_listener)
    return app
