"""Crafted callback requests through Flask's test client, as the dash renderer
would send them (or as anyone could): `DashClient(app).call(...)`.

A callback is named by one of its output ids ("overview-grid", "gate-cell",
...); inputs and states are given as {"component-id.property": value}. A
wildcard (ALL) input or output takes a list of concrete ids (and values).
Background callbacks are started and polled until they answer.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from dash import Dash

_CONFIG = re.compile(r'<script id="_dash-config" type="application/json">(.*?)</script>', re.S)
UPDATE = "/_dash-update-component"


def _outputs(output: str) -> list[tuple[str, str]]:
    """(id, property) of every output in dash's output string."""
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    return [tuple(part.rsplit(".", 1)) for part in parts]  # type: ignore[misc]


def _id(text: str) -> Any:
    return json.loads(text) if text.startswith("{") else text


def id_string(component_id: Any) -> str:
    """Dash's string form of an id (sorted compact JSON for a dict id)."""
    if isinstance(component_id, dict):
        return json.dumps(component_id, sort_keys=True, separators=(",", ":"))
    return str(component_id)


class DashClient:
    def __init__(self, app: Dash) -> None:
        self.client = app.server.test_client()
        page = self.client.get("/")
        match = _CONFIG.search(page.data.decode())
        assert match, "the page has no dash config"
        self.end_id = json.loads(match.group(1))["end_id"]
        self.dependencies = self.client.get("/_dash-dependencies").get_json()

    def dependency(self, output_id: str) -> dict:
        """The server callback with an output `output_id` (a component id, or a
        piece of dash's output string such as "flow-query.value@")."""
        for dependency in self.dependencies:
            if dependency.get("clientside_function"):
                continue
            if "." in output_id:
                if output_id in dependency["output"]:
                    return dependency
                continue
            ids = [component for component, _ in _outputs(dependency["output"])]
            if any(output_id == c or f'"{output_id}"' in c for c in ids):
                return dependency
        raise KeyError(output_id)

    def payload(
        self,
        output_id: str,
        values: dict[str, Any],
        *,
        changed: list[str] | None = None,
        wildcard_outputs: list[Any] | None = None,
    ) -> dict:
        dependency = self.dependency(output_id)
        outputs = []
        for component, prop in _outputs(dependency["output"]):
            if "ALL" in component:
                ids = wildcard_outputs or []
                outputs.append([{"id": cid, "property": prop} for cid in ids])
            else:
                outputs.append({"id": component, "property": prop})

        def entries(specs: list[dict]) -> list:
            result = []
            for spec in specs:
                key = f"{spec['id']}.{spec['property']}"
                value = values.get(key)
                if "ALL" in spec["id"]:  # a list of (id, value) pairs
                    result.append(
                        [
                            {"id": cid, "property": spec["property"], "value": v}
                            for cid, v in value or []
                        ]
                    )
                else:
                    result.append(
                        {"id": _id(spec["id"]), "property": spec["property"], "value": value}
                    )
            return result

        multi = dependency["output"].startswith("..")
        return {
            "output": dependency["output"],
            "outputs": outputs if multi else outputs[0],
            "inputs": entries(dependency["inputs"]),
            "state": entries(dependency["state"]),
            "changedPropIds": changed if changed is not None else [],
        }

    def post(self, body: dict | str, **query: str):
        data = body if isinstance(body, str) else json.dumps(body)  # NaN/Infinity allowed
        return self.client.post(
            UPDATE,
            data=data,
            query_string={"endId": self.end_id, **query},
            content_type="application/json",
        )

    def call(self, output_id: str, values: dict[str, Any], **options):
        """Response of one callback request (a background callback is polled
        until it answers, for up to `timeout` s)."""
        timeout = options.pop("timeout", 60)
        body = self.payload(output_id, values, **options)
        response = self.post(body)
        if response.status_code != 200:
            return response
        data = json.loads(response.data)
        if "cacheKey" not in data:
            return response
        handles = {"cacheKey": data["cacheKey"], "job": data["job"]}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            polled = self.post(body, **handles)
            if polled.status_code != 200:
                return polled
            if "response" in json.loads(polled.data):
                return polled
        raise TimeoutError(f"no answer from the {output_id} job in {timeout} s")

    def start(self, output_id: str, values: dict[str, Any], **options) -> tuple[dict, dict]:
        """Start a background callback: (its request body, its handles)."""
        body = self.payload(output_id, values, **options)
        data = json.loads(self.post(body).data)
        return body, {"cacheKey": data["cacheKey"], "job": data["job"]}

    def poll(self, body: dict, handles: dict, timeout: float = 60):
        """Poll a started job until it answers (the response) or `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            polled = self.post(body, **handles)
            if polled.status_code != 200 or "response" in json.loads(polled.data):
                return polled
            time.sleep(0.1)
        raise TimeoutError("the job never answered")


def text_of(response) -> str:
    """All of a response's JSON as text (messages are somewhere in it)."""
    return response.data.decode("utf-8", "replace")
