from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeywordEvent(_message.Message):
    __slots__ = ("event_id", "trace_id", "device_id", "edge_node", "keyword", "score", "start_time", "end_time", "fired_time", "created_unix_ms", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    EDGE_NODE_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    FIRED_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    trace_id: str
    device_id: str
    edge_node: str
    keyword: str
    score: float
    start_time: float
    end_time: float
    fired_time: float
    created_unix_ms: int
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, event_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., device_id: _Optional[str] = ..., edge_node: _Optional[str] = ..., keyword: _Optional[str] = ..., score: _Optional[float] = ..., start_time: _Optional[float] = ..., end_time: _Optional[float] = ..., fired_time: _Optional[float] = ..., created_unix_ms: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "prefill_tokens_computed")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_COMPUTED_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    prefill_tokens_computed: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., prefill_tokens_computed: _Optional[int] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("answer_id", "event_id", "trace_id", "device_id", "edge_node", "keyword", "text", "error", "created_unix_ms", "usage", "ttft_ms")
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    EDGE_NODE_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    answer_id: str
    event_id: str
    trace_id: str
    device_id: str
    edge_node: str
    keyword: str
    text: str
    error: str
    created_unix_ms: int
    usage: Usage
    ttft_ms: float
    def __init__(self, answer_id: _Optional[str] = ..., event_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., device_id: _Optional[str] = ..., edge_node: _Optional[str] = ..., keyword: _Optional[str] = ..., text: _Optional[str] = ..., error: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., ttft_ms: _Optional[float] = ...) -> None: ...
