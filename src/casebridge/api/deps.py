"""Dependency aliases for the routers (``Annotated[..., Depends(...)]``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from casebridge.api.security import ReadKey
from casebridge.api.services import Services


async def get_services(request: Request) -> Services:  # a coroutine: see security.authenticate
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

__all__ = ["ReadKey", "ServicesDep"]
