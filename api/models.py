"""The request and response bodies of the reference document."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The distribution reference grammar, [registry[:port]/]path[:tag][@digest], bounded to 255
# characters. The same pattern guards the playbook (deploy_image_pattern in playbooks/deploy.yml).
_COMPONENT = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
# A first component is a registry only with a dot or a port, or as localhost (as Docker reads it).
_DOMAIN = rf"(?:localhost(?::[0-9]+)?|{_COMPONENT}(?:\.{_COMPONENT})+(?::[0-9]+)?|{_COMPONENT}:[0-9]+)"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?=.{{1,255}}$)(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?$"
)


class DeployRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    service: str = Field(min_length=1, max_length=128)
    image: str | None = Field(None, max_length=255)
    repository: str | None = Field(None, max_length=256)
    commit: str | None = Field(None, max_length=128)
    message: str | None = Field(None, max_length=4096)

    @field_validator("image")
    @classmethod
    def image_is_a_reference(cls, image: str | None) -> str | None:
        if image is not None and not IMAGE_REFERENCE.fullmatch(image):
            raise ValueError("not a valid Docker image reference ([registry[:port]/]name[:tag][@sha256:digest])")
        return image or None


class DeploySuccess(BaseModel):
    success: bool = True
    service: str
    message: str
    old_image: str | None
    new_image: str | None
    steps: list[dict[str, Any]]


class DeployFailure(BaseModel):
    success: bool = False
    service: str
    error: str
    logs: str
    steps: list[dict[str, Any]]
