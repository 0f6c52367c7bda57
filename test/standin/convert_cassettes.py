#!/usr/bin/env python3
"""Convert the recorded PayTrace VCR cassettes (YAML) into replay fixtures (JSON).

Reads  /work/shared/research/paytrace-recorded/*.yml (or the directory given)
writes test/fixtures/paytrace-recorded/<name>.json, one per cassette:
    {"request":  {"method", "uri", "path", "body", "headers": {name: value}},
     "response": {"status", "headers": {name: value}, "body"}}
The bodies must equal the bytes PayTrace sent, so the YAML single-quoted
scalars are folded exactly as YAML does (a line break plus the indentation
around it becomes one space, an empty line a newline, '' a single quote).

Only the YAML subset VCR writes is understood (block mappings, block
sequences, plain and single-quoted scalars); anything else is an error, so a
new cassette can never be converted silently wrong. Standard library only.
Usage: python3 convert_cassettes.py [SOURCE_DIR [TARGET_DIR]]
"""

import json
import pathlib
import sys
import urllib.parse

SOURCE = pathlib.Path("/work/shared/research/paytrace-recorded")
TARGET = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "paytrace-recorded"


class Line:
    def __init__(self, indent, text, number):
        self.indent, self.text, self.number = indent, text, number


def _value_part(text):
    """The scalar part of "key: value", "- value" or "- key: value"."""
    if text.startswith("- "):
        text = text[2:]
    key, separator, value = text.partition(": ")
    return value if separator and not key.startswith("'") else text


def _quote_closed(value):
    """True if the single-quoted scalar that value starts with ends in value."""
    index = 1
    while index < len(value):
        if value[index] == "'":
            if value[index + 1:index + 2] == "'":
                index += 2
                continue
            if value[index + 1:].strip():
                raise ValueError(f"text after a closing quote: {value!r}")
            return True
        index += 1
    return False


def logical_lines(text):
    """Indentation and text per line; a multi-line quoted scalar stays one Line."""
    raw_lines = text.splitlines()
    lines, index = [], 0
    while index < len(raw_lines):
        raw = raw_lines[index]
        index += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped == "---":
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        body = raw[indent:]
        value = _value_part(body)
        if value.startswith("'"):
            while not _quote_closed(value):
                if index >= len(raw_lines):
                    raise ValueError(f"unterminated quoted scalar at line {index}")
                body += "\n" + raw_lines[index]
                value += "\n" + raw_lines[index]
                index += 1
        lines.append(Line(indent, body, index))
    return lines


def fold_single_quoted(value):
    """YAML flow folding of a single-quoted scalar ('...' including quotes)."""
    parts = value[1:-1].split("\n")
    if len(parts) > 1:
        parts = [parts[0].rstrip(" \t")] + [p.strip(" \t") for p in parts[1:-1]] \
            + [parts[-1].lstrip(" \t")]
    text, pending_newlines = parts[0], 0
    for part in parts[1:]:
        if part == "":
            pending_newlines += 1
            continue
        text += ("\n" * pending_newlines if pending_newlines else " ") + part
        pending_newlines = 0
    text += "\n" * pending_newlines
    return text.replace("''", "'")


def scalar(value):
    value = value.strip()
    if value.startswith("'"):
        return fold_single_quoted(value)
    if value[:1] in ('"', "|", ">", "&", "*", "!", "[", "{"):
        raise ValueError(f"YAML construct not supported by this converter: {value!r}")
    return value


def parse_node(lines, index, indent):
    if lines[index].text.startswith("- ") or lines[index].text == "-":
        return parse_sequence(lines, index, indent)
    return parse_mapping(lines, index, indent)


def parse_mapping(lines, index, indent):
    result = {}
    while index < len(lines) and lines[index].indent == indent \
            and not lines[index].text.startswith("-"):
        line = lines[index]
        key, separator, value = line.text.partition(":")
        if not separator or (value and not value.startswith((" ", "\n"))):
            raise ValueError(f"line {line.number}: expected 'key: value': {line.text!r}")
        index += 1
        if value.strip():
            result[key] = scalar(value)
        elif index < len(lines) and (lines[index].indent > indent or (
                lines[index].indent == indent and lines[index].text.startswith("- "))):
            result[key], index = parse_node(lines, index, lines[index].indent)
        else:
            result[key] = None
    return result, index


def parse_sequence(lines, index, indent):
    items = []
    while index < len(lines) and lines[index].indent == indent \
            and lines[index].text.startswith("- "):
        rest = lines[index].text[2:]
        key, separator, _ = rest.partition(":")
        if separator and not rest.startswith("'") and " " not in key:
            # "- key: value": a mapping whose first line shares the dash
            lines[index] = Line(indent + 2, rest, lines[index].number)
            item, index = parse_mapping(lines, index, indent + 2)
        else:
            item, index = scalar(rest), index + 1
        items.append(item)
    return items, index


def parse_yaml(text):
    lines = logical_lines(text)
    document, index = parse_node(lines, 0, lines[0].indent)
    if index != len(lines):
        raise ValueError(f"unparsed content from line {lines[index].number}")
    return document


def flat_headers(headers):
    return {name: ", ".join(values) if isinstance(values, list) else values
            for name, values in (headers or {}).items()}


def fixture_from_cassette(cassette):
    interactions = cassette["http_interactions"]
    if len(interactions) != 1:
        raise ValueError("expected exactly one interaction per cassette")
    request, response = interactions[0]["request"], interactions[0]["response"]
    return {
        "request": {"method": request["method"].upper(), "uri": request["uri"],
                    "path": urllib.parse.urlsplit(request["uri"]).path,
                    "body": request["body"]["string"],
                    "headers": flat_headers(request["headers"])},
        "response": {"status": int(response["status"]["code"]),
                     "headers": flat_headers(response["headers"]),
                     "body": response["body"]["string"]},
    }


def convert(source=SOURCE, target=TARGET):
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(source.glob("*.yml")):
        fixture = fixture_from_cassette(parse_yaml(path.read_text(encoding="utf-8")))
        json.loads(fixture["response"]["body"])          # recorded bodies are JSON
        out = target / (path.stem + ".json")
        out.write_text(json.dumps(fixture, indent=2, ensure_ascii=False) + "\n",
                       encoding="utf-8")
        written.append(out)
    return written


if __name__ == "__main__":
    arguments = [pathlib.Path(a) for a in sys.argv[1:3]]
    for written_path in convert(*arguments):
        print(written_path)
