"""Sources and their data contracts: what a producer may send on a topic.

Ingestion enforces these rules; the generator obeys them; the feature service
and the trainer read field types from them. The wire format of a `timestamp`
field is defined once here (`parse_timestamp`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal, TypeAlias

from pydantic import Field, model_validator

from mlbus.spec._base import Identifier, ProblemList, SpecModel, one_of
from mlbus.spec._durations import Seconds

FieldType: TypeAlias = Literal["int", "float", "string", "bool", "timestamp", "enum"]
UnknownFields: TypeAlias = Literal["reject", "drop", "keep"]
SourceKind: TypeAlias = Literal["data", "labels"]

NUMERIC_TYPES: frozenset[str] = frozenset({"int", "float"})
CATEGORICAL_TYPES: frozenset[str] = frozenset({"string", "enum", "bool"})
KEY_TYPES: frozenset[str] = frozenset({"string", "int"})
"""Types an entity id or event id may have; both travel as Kafka keys."""

TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"


def parse_timestamp(value: object) -> datetime:
    """A `timestamp` field's value: an RFC 3339 / ISO-8601 string with a UTC offset.

    `"2025-01-01T12:00:00.250Z"` and `"2025-01-01T13:00:00+01:00"` are valid;
    a naive time or a number is not, because its instant would be a guess.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 time string with an offset, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"expected an ISO-8601 time such as 2025-01-01T12:00:00Z, got {value!r}"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"expected a time with a UTC offset ('Z' or '+01:00'), got {value!r}")
    return parsed


class FieldSpec(SpecModel):
    """One field of an event: its type and the rules its value must follow.

    `required`: the key must be present. `nullable`: its value may be null.
    `min`/`max` bound numbers; `min_length`/`max_length`/`pattern` (a full
    match) bound strings; `values` lists an enum's allowed strings.
    """

    type: FieldType
    required: bool = True
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=1)
    pattern: str | None = None
    values: tuple[str, ...] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _rules_fit_type(self) -> FieldSpec:
        problems = ProblemList()
        numeric = self.type in NUMERIC_TYPES
        for name in ("min", "max"):
            if getattr(self, name) is not None and not numeric:
                problems.add(
                    (name,), f"expected only on int or float fields, got it on {self.type}"
                )
        if self.min is not None and self.max is not None and self.min > self.max:
            problems.add(("max",), f"expected max >= min ({self.min}), got {self.max}")
        if self.type == "int":
            for name in ("min", "max"):
                bound = getattr(self, name)
                if bound is not None and not float(bound).is_integer():
                    problems.add((name,), f"expected a whole number on an int field, got {bound}")
        for name in ("min_length", "max_length", "pattern"):
            if getattr(self, name) is not None and self.type != "string":
                problems.add((name,), f"expected only on string fields, got it on {self.type}")
        if (
            self.min_length is not None
            and self.max_length is not None
            and self.min_length > self.max_length
        ):
            problems.add(
                ("max_length",),
                f"expected max_length >= min_length ({self.min_length}), got {self.max_length}",
            )
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                problems.add(
                    ("pattern",), f"expected a valid regular expression, got an error: {exc}"
                )
        if self.type == "enum":
            if not self.values:
                problems.add(("values",), "expected a non-empty list of allowed values for an enum")
            elif len(set(self.values)) != len(self.values):
                dupes = sorted({v for v in self.values if self.values.count(v) > 1})
                problems.add(("values",), f"expected unique values, got duplicates {dupes}")
        elif self.values is not None:
            problems.add(("values",), f"expected only on enum fields, got it on {self.type}")
        problems.raise_if_any()
        return self

    @property
    def is_numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    @property
    def is_categorical(self) -> bool:
        return self.type in CATEGORICAL_TYPES


class DataContract(SpecModel):
    """The rules for one source's events, versioned so a breaking change is visible.

    `allowed_skew_s`: how far in the future an event time may be; `max_lateness_s`:
    how far in the past. `unknown_fields`: what ingestion does with keys not listed.
    """

    version: int = Field(ge=1)
    max_bytes: int = Field(default=65_536, gt=0)
    unknown_fields: UnknownFields = "reject"
    allowed_skew_s: Seconds = 300
    max_lateness_s: Seconds = 7 * 86_400
    fields: dict[Identifier, FieldSpec] = Field(min_length=1)


class LabelLink(SpecModel):
    """How a label source points at the event it labels.

    `event_id_field` (in the label event) holds the `event_id` of an event of the
    data source `source`; `label_field` holds the label.
    """

    source: str
    event_id_field: str
    label_field: str


class Source(SpecModel):
    """A topic producers write to, and the contract its events follow.

    `entity` names the entity-id field (the Kafka key, e.g. `card_id`),
    `event_time` the timestamp field, `event_id` the unique id field (null:
    ingestion derives the id from the content).
    """

    topic: str = Field(pattern=TOPIC_PATTERN)
    kind: SourceKind = "data"
    entity: str
    event_time: str
    event_id: str | None = None
    description: str = ""
    contract: DataContract
    labels: LabelLink | None = None

    @model_validator(mode="after")
    def _fields_exist(self) -> Source:
        problems = ProblemList()
        fields = self.contract.fields
        self._check_key(problems, ("entity",), self.entity, KEY_TYPES)
        self._check_key(problems, ("event_time",), self.event_time, frozenset({"timestamp"}))
        if self.event_id is not None:
            self._check_key(problems, ("event_id",), self.event_id, KEY_TYPES)
        if self.kind == "labels" and self.labels is None:
            problems.add(
                ("labels",),
                "expected a labels block {source, event_id_field, label_field} on a labels source",
            )
        if self.kind == "data" and self.labels is not None:
            problems.add(("labels",), "expected no labels block on a data source (kind: data)")
        if self.labels is not None:
            self._check_key(
                problems, ("labels", "event_id_field"), self.labels.event_id_field, KEY_TYPES
            )
            label = self.labels.label_field
            if label not in fields:
                problems.add(
                    ("labels", "label_field"),
                    f"expected one of the contract's fields ({one_of(fields)}), got {label!r}",
                )
            elif not fields[label].required or fields[label].nullable:
                problems.add(
                    ("labels", "label_field"),
                    f"expected the label field {label!r} to be required and not nullable",
                )
        problems.raise_if_any()
        return self

    def _check_key(
        self, problems: ProblemList, loc: tuple[str, ...], name: str, types: frozenset[str]
    ) -> None:
        fields = self.contract.fields
        if name not in fields:
            problems.add(
                loc, f"expected one of the contract's fields ({one_of(fields)}), got {name!r}"
            )
            return
        spec = fields[name]
        if spec.type not in types:
            problems.add(
                loc, f"expected a field of type {one_of(types)}, got {name!r} of type {spec.type}"
            )
        if not spec.required or spec.nullable:
            problems.add(loc, f"expected the field {name!r} to be required and not nullable")

    @property
    def is_labels(self) -> bool:
        return self.kind == "labels"
