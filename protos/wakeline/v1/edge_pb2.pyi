from wakeline.v1 import audio_pb2 as _audio_pb2
from wakeline.v1 import bus_pb2 as _bus_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeywordSpec(_message.Message):
    __slots__ = ("text", "threshold")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    text: str
    threshold: float
    def __init__(self, text: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class EnrolledKeyword(_message.Message):
    __slots__ = ("text", "phonemes", "threshold", "auto_threshold")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PHONEMES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    AUTO_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    text: str
    phonemes: _containers.RepeatedScalarFieldContainer[str]
    threshold: float
    auto_threshold: bool
    def __init__(self, text: _Optional[str] = ..., phonemes: _Optional[_Iterable[str]] = ..., threshold: _Optional[float] = ..., auto_threshold: _Optional[bool] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("device_id", "format", "keywords", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    format: _audio_pb2.AudioFormat
    keywords: _containers.RepeatedCompositeFieldContainer[KeywordSpec]
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, device_id: _Optional[str] = ..., format: _Optional[_Union[_audio_pb2.AudioFormat, _Mapping]] = ..., keywords: _Optional[_Iterable[_Union[KeywordSpec, _Mapping]]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class KeywordUpdate(_message.Message):
    __slots__ = ("add", "remove")
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    add: _containers.RepeatedCompositeFieldContainer[KeywordSpec]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, add: _Optional[_Iterable[_Union[KeywordSpec, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("config", "audio", "update")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    audio: _audio_pb2.AudioChunk
    update: KeywordUpdate
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., audio: _Optional[_Union[_audio_pb2.AudioChunk, _Mapping]] = ..., update: _Optional[_Union[KeywordUpdate, _Mapping]] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("event_id", "keyword", "score", "threshold", "start_time", "end_time", "fired_time", "latency_ms")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    FIRED_TIME_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    keyword: str
    score: float
    threshold: float
    start_time: float
    end_time: float
    fired_time: float
    latency_ms: float
    def __init__(self, event_id: _Optional[str] = ..., keyword: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., start_time: _Optional[float] = ..., end_time: _Optional[float] = ..., fired_time: _Optional[float] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class StreamStarted(_message.Message):
    __slots__ = ("session_id", "edge_node", "keywords", "model_sample_rate")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EDGE_NODE_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    edge_node: str
    keywords: _containers.RepeatedCompositeFieldContainer[EnrolledKeyword]
    model_sample_rate: int
    def __init__(self, session_id: _Optional[str] = ..., edge_node: _Optional[str] = ..., keywords: _Optional[_Iterable[_Union[EnrolledKeyword, _Mapping]]] = ..., model_sample_rate: _Optional[int] = ...) -> None: ...

class KeywordsChanged(_message.Message):
    __slots__ = ("keywords",)
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    keywords: _containers.RepeatedCompositeFieldContainer[EnrolledKeyword]
    def __init__(self, keywords: _Optional[_Iterable[_Union[EnrolledKeyword, _Mapping]]] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("started", "detection", "answer", "keywords")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    DETECTION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    started: StreamStarted
    detection: Detection
    answer: _bus_pb2.Answer
    keywords: KeywordsChanged
    def __init__(self, started: _Optional[_Union[StreamStarted, _Mapping]] = ..., detection: _Optional[_Union[Detection, _Mapping]] = ..., answer: _Optional[_Union[_bus_pb2.Answer, _Mapping]] = ..., keywords: _Optional[_Union[KeywordsChanged, _Mapping]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("device_id", "keywords")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    keywords: _containers.RepeatedCompositeFieldContainer[KeywordSpec]
    def __init__(self, device_id: _Optional[str] = ..., keywords: _Optional[_Iterable[_Union[KeywordSpec, _Mapping]]] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("keywords",)
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    keywords: _containers.RepeatedCompositeFieldContainer[EnrolledKeyword]
    def __init__(self, keywords: _Optional[_Iterable[_Union[EnrolledKeyword, _Mapping]]] = ...) -> None: ...

class ListKeywordsRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class ListKeywordsResponse(_message.Message):
    __slots__ = ("keywords",)
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    keywords: _containers.RepeatedCompositeFieldContainer[EnrolledKeyword]
    def __init__(self, keywords: _Optional[_Iterable[_Union[EnrolledKeyword, _Mapping]]] = ...) -> None: ...

class RemoveKeywordRequest(_message.Message):
    __slots__ = ("device_id", "text")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    text: str
    def __init__(self, device_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class RemoveKeywordResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...
