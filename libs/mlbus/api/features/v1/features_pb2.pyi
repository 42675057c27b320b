import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("entities", "features", "event_time")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedScalarFieldContainer[str]
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, entities: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FeatureValue(_message.Message):
    __slots__ = ("status", "null_value", "int_value", "double_value", "string_value", "bool_value", "age_s")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[FeatureValue.Status]
        PRESENT: _ClassVar[FeatureValue.Status]
        NOT_FOUND: _ClassVar[FeatureValue.Status]
    STATUS_UNSPECIFIED: FeatureValue.Status
    PRESENT: FeatureValue.Status
    NOT_FOUND: FeatureValue.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    status: FeatureValue.Status
    null_value: bool
    int_value: int
    double_value: float
    string_value: str
    bool_value: bool
    age_s: float
    def __init__(self, status: _Optional[_Union[FeatureValue.Status, str]] = ..., null_value: _Optional[bool] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ..., age_s: _Optional[float] = ...) -> None: ...

class EntityFeatures(_message.Message):
    __slots__ = ("entity_id", "values")
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    entity_id: str
    values: _containers.RepeatedCompositeFieldContainer[FeatureValue]
    def __init__(self, entity_id: _Optional[str] = ..., values: _Optional[_Iterable[_Union[FeatureValue, _Mapping]]] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("feature_names", "entities")
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    entities: _containers.RepeatedCompositeFieldContainer[EntityFeatures]
    def __init__(self, feature_names: _Optional[_Iterable[str]] = ..., entities: _Optional[_Iterable[_Union[EntityFeatures, _Mapping]]] = ...) -> None: ...
