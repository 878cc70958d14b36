"""`GET /docs` of bitfit-serve: the OpenAPI document as one self-contained HTML page (no scripts, styles inline,
nothing fetched), so it works where the server runs without network, unlike FastAPI's Swagger UI (a CDN's JS).

>>> page = render({"info": {"title": "t", "version": "1"}, "paths": {"/health": {"get": {"summary": "s",
...     "responses": {"200": {"description": "ok"}}}}}, "components": {"schemas": {}}})
>>> "<h2 id=\\"get-health\\">GET /health</h2>" in page and "<script" not in page
True
"""

import json
from html import escape

STYLE = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
         "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;"
         "text-align:left;vertical-align:top}pre{background:#f4f4f4;padding:.5rem;overflow-x:auto}"
         "code{background:#f4f4f4}")


def _type(schema: dict) -> str:
    """A property's type in a few words: `string`, `list of Item`, `Classification or Regression`, ..."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_type(s) for s in schema[key])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return escape(str(kind))


def _properties(schema: dict) -> str:
    props = schema.get("properties")
    if not props:
        return f"<p>{_type(schema)}</p>"
    required = set(schema.get("required", []))
    rows = "".join(f"<tr><td><code>{escape(name)}</code></td><td>{_type(prop)}</td>"
                   f"<td>{'yes' if name in required else ''}</td><td>{escape(prop.get('description', ''))}</td></tr>"
                   for name, prop in props.items())
    return f"<table><tr><th>field</th><th>type</th><th>required</th><th>meaning</th></tr>{rows}</table>"


def _operation(path: str, method: str, op: dict) -> str:
    anchor = f"{method}-{path.strip('/').replace('/', '-') or 'root'}"
    parts = [f'<h2 id="{escape(anchor)}">{method.upper()} {escape(path)}</h2>',
             f"<p>{escape(op.get('summary', ''))}</p>"]
    body = (op.get("requestBody") or {}).get("content", {}).get("application/json")
    if body:
        parts.append(f"<h3>Request body</h3><p>{_type(body['schema'])}</p>")
        for name, example in (body.get("examples") or {}).items():
            parts.append(f"<p>{escape(name)}:</p><pre>{escape(json.dumps(example['value'], indent=1))}</pre>")
    rows = []
    for status, answer in op.get("responses", {}).items():
        schema = (answer.get("content") or {}).get("application/json", {}).get("schema")
        rows.append(f"<tr><td>{escape(status)}</td><td>{_type(schema) if schema else ''}</td>"
                    f"<td>{escape(answer.get('description', ''))}</td></tr>")
    parts.append(f"<h3>Answers</h3><table><tr><th>status</th><th>body</th><th>when</th></tr>{''.join(rows)}</table>")
    return "\n".join(parts)


def render(document: dict) -> str:
    """The whole page: each route (body, examples, every status it answers) and each schema's fields."""
    info = document.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    operations = [_operation(path, method, op) for path, item in document.get("paths", {}).items()
                  for method, op in item.items()]
    schemas = [f'<h3 id="schema-{escape(name)}">{escape(name)}</h3><p>{escape(schema.get("description", ""))}</p>'
               f"{_properties(schema)}" for name, schema in document.get("components", {}).get("schemas", {}).items()]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f"<p>{escape(info.get('description', ''))}</p>"
            f'<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
            f"{escape(str(document.get('openapi', '')))}).</p>\n"
            + "\n".join(operations) + "\n<h2>Schemas</h2>\n" + "\n".join(schemas) + "</body></html>\n")
