import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FieldValue(_message.Message):
    __slots__ = ("double_value", "int_value", "string_value", "bool_value")
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    double_value: float
    int_value: int
    string_value: str
    bool_value: bool
    def __init__(self, double_value: _Optional[float] = ..., int_value: _Optional[int] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class SubmitLabelRequest(_message.Message):
    __slots__ = ("scored_event_id", "value", "entity_id", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FieldValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FieldValue, _Mapping]] = ...) -> None: ...
    SCORED_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    scored_event_id: str
    value: str
    entity_id: str
    fields: _containers.MessageMap[str, FieldValue]
    def __init__(self, scored_event_id: _Optional[str] = ..., value: _Optional[str] = ..., entity_id: _Optional[str] = ..., fields: _Optional[_Mapping[str, FieldValue]] = ...) -> None: ...

class SubmitLabelResponse(_message.Message):
    __slots__ = ("topic", "partition", "offset", "entity_id", "label_json")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_JSON_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    offset: int
    entity_id: str
    label_json: str
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., entity_id: _Optional[str] = ..., label_json: _Optional[str] = ...) -> None: ...

class ListRequestsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class QueueCounts(_message.Message):
    __slots__ = ("requested", "answered", "expired", "dropped", "open", "answer_rate")
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ANSWER_RATE_FIELD_NUMBER: _ClassVar[int]
    requested: int
    answered: int
    expired: int
    dropped: int
    open: int
    answer_rate: float
    def __init__(self, requested: _Optional[int] = ..., answered: _Optional[int] = ..., expired: _Optional[int] = ..., dropped: _Optional[int] = ..., open: _Optional[int] = ..., answer_rate: _Optional[float] = ...) -> None: ...

class LabelingRequest(_message.Message):
    __slots__ = ("scored_event_id", "entity_id", "model", "version", "reason", "priority", "scores", "features", "predicted_at")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FieldValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FieldValue, _Mapping]] = ...) -> None: ...
    SCORED_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_AT_FIELD_NUMBER: _ClassVar[int]
    scored_event_id: str
    entity_id: str
    model: str
    version: int
    reason: str
    priority: float
    scores: _containers.ScalarMap[str, float]
    features: _containers.MessageMap[str, FieldValue]
    predicted_at: _timestamp_pb2.Timestamp
    def __init__(self, scored_event_id: _Optional[str] = ..., entity_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ..., priority: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ..., features: _Optional[_Mapping[str, FieldValue]] = ..., predicted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListRequestsResponse(_message.Message):
    __slots__ = ("model", "counts", "requests")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    counts: QueueCounts
    requests: _containers.RepeatedCompositeFieldContainer[LabelingRequest]
    def __init__(self, model: _Optional[str] = ..., counts: _Optional[_Union[QueueCounts, _Mapping]] = ..., requests: _Optional[_Iterable[_Union[LabelingRequest, _Mapping]]] = ...) -> None: ...
