"""The asyncio client: :class:`AsyncLabelwatchClient`, the same surface as the blocking one."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import grpc
import grpc.aio

from labelwatch_client import convert
from labelwatch_client._transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    HEALTH_CHECK_METHOD,
    ChannelSettings,
    backoff_delays,
    deadline_after,
    decode_health_response,
    encode_health_request,
    remaining,
    retry_delay,
)
from labelwatch_client.errors import ProtocolMismatch, from_rpc_error
from labelwatch_client.types import Example, ModelInfo, ScoreResult
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2 as pb
from labelwatch_proto.labelwatch.v1 import labelwatch_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # numpy only for score_batch: imported when it is first called
    from numpy.typing import ArrayLike

    from labelwatch_client.columnar import BatchResult, Tags

log = logging.getLogger(__name__)
T = TypeVar("T")
Batches = Iterable[Sequence[Example]] | AsyncIterable[Sequence[Example]]


class AsyncLabelwatchClient:
    """An asyncio connection to a labelwatch server; see :class:`LabelwatchClient`.

    The channel is opened on first use, in the running event loop; use the
    client from that loop only.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        token: str | None = None,
        max_retries: int = 3,
        backoff_seconds: float = 0.1,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout}")
        if max_retries < 0 or backoff_seconds < 0:
            raise ValueError("max_retries and backoff_seconds must be >= 0")
        self._settings = ChannelSettings(
            target=target,
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            token=token,
            max_message_bytes=max_message_bytes,
        )
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff_seconds = backoff_seconds
        self._rng = random.Random()
        self._metadata = self._settings.metadata()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.LabelQualityAsyncStub | None = None
        self._class_names: tuple[str, ...] | None = None  # the server's, for score_batch

    @property
    def target(self) -> str:
        """The ``host:port`` this client calls."""
        return self._settings.target

    def __repr__(self) -> str:
        return f"AsyncLabelwatchClient({self.target!r}, tls={self._settings.uses_tls})"

    def _open(self) -> tuple[grpc.aio.Channel, pb_grpc.LabelQualityAsyncStub]:
        if self._channel is None or self._stub is None:
            settings = self._settings
            if settings.uses_tls:
                self._channel = grpc.aio.secure_channel(
                    settings.target, settings.credentials(), options=settings.options()
                )
            else:
                self._channel = grpc.aio.insecure_channel(
                    settings.target, options=settings.options()
                )
            self._stub = pb_grpc.LabelQualityStub(self._channel)
        return self._channel, self._stub

    async def score(
        self, examples: Iterable[Example], *, include_probabilities: bool = False
    ) -> list[ScoreResult]:
        """Score ``examples`` in one request; one result per example, in order."""
        request = convert.score_request(examples, include_probabilities)
        if not request.examples:
            return []
        _, stub = self._open()
        response = await self._unary(
            lambda timeout: stub.Score(request, timeout=timeout, metadata=self._metadata)
        )
        return convert.results_from_response(response)

    async def score_batch(
        self,
        ids: Sequence[str],
        *,
        probabilities: ArrayLike | None = None,
        features: ArrayLike | None = None,
        tags: Tags | None = None,
        tags_csr: tuple[ArrayLike, ArrayLike] | None = None,
        annotator_ids: Sequence[str] | None = None,
        include_probabilities: bool = False,
    ) -> BatchResult:
        """Score N examples given as arrays in one ScoreBatch call; see
        :meth:`LabelwatchClient.score_batch`."""
        from labelwatch_client import columnar

        if self._class_names is None:  # a reload keeps the classes
            self._class_names = (await self.model_info()).class_names
        names = self._class_names
        request = columnar.batch_request(
            ids,
            probabilities=probabilities,
            features=features,
            tags=tags,
            tags_csr=tags_csr,
            annotator_ids=annotator_ids,
            include_probabilities=include_probabilities,
            class_index={name: k for k, name in enumerate(names)},
        )
        _, stub = self._open()
        response = await self._unary(
            lambda timeout: stub.ScoreBatch(
                request.message, timeout=timeout, metadata=self._metadata
            )
        )
        return columnar.result_from_response(response, request, names)

    async def score_stream(
        self,
        batches: Batches,
        *,
        include_probabilities: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[list[ScoreResult]]:
        """Score (async) ``batches`` over one ScoreStream call; yield one list per batch.

        Same rules as :meth:`LabelwatchClient.score_stream` (lazy, no deadline
        unless ``timeout``, UNAVAILABLE retried only before the first response),
        except that each batch is sent once the previous one's results arrived:
        a pipelined write racing the server's final status makes grpc.aio report
        INTERNAL instead of that status (grpc/grpc#36066).
        """
        _, stub = self._open()
        source = _BatchSource(batches)
        first = await source.next()
        if first is None:
            return
        request: pb.ScoreRequest | None = convert.score_request(first, include_probabilities)
        deadline = deadline_after(timeout)
        delays = backoff_delays(self._max_retries, self._backoff_seconds, self._rng)
        answered = False
        while request is not None:
            call = stub.ScoreStream(timeout=remaining(deadline), metadata=self._metadata)
            try:
                while request is not None:
                    await call.write(request)
                    response = await call.read()
                    if not isinstance(response, pb.ScoreResponse):  # EOF: ended early
                        raise ProtocolMismatch(
                            "the server closed the stream without answering a batch",
                            self.target,
                        )
                    answered = True
                    yield convert.results_from_response(response)
                    batch = await source.next()
                    request = (
                        None
                        if batch is None
                        else convert.score_request(batch, include_probabilities)
                    )
                await call.done_writing()
                await call.read()  # EOF; raises if the final status is not OK
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, self.target)
                delay = None if answered else retry_delay(error.code, delays, deadline)
                if delay is None:
                    raise error from exc
                log.debug(
                    "event=retry method=ScoreStream code=%s delay=%.3f", error.code.name, delay
                )
                await asyncio.sleep(delay)
            finally:
                call.cancel()

    async def model_info(self) -> ModelInfo:
        """Describe the server's model, classes and calibration."""
        _, stub = self._open()
        info = await self._unary(
            lambda timeout: stub.GetModelInfo(
                pb.GetModelInfoRequest(), timeout=timeout, metadata=self._metadata
            )
        )
        return convert.model_info_from_proto(info)

    async def health(self, service: str = "") -> str:
        """The server's ``grpc.health.v1`` status, e.g. ``"SERVING"``. Not retried."""
        channel, _ = self._open()
        check = channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=encode_health_request,
            response_deserializer=decode_health_response,
        )
        try:
            status: str = await check(service, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from exc
        return status

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def __aenter__(self) -> AsyncLabelwatchClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _unary(self, call: Callable[[float | None], Awaitable[T]]) -> T:
        """Await ``call(timeout)`` with retries on UNAVAILABLE within one overall deadline."""
        deadline = deadline_after(self._timeout)
        delays = backoff_delays(self._max_retries, self._backoff_seconds, self._rng)
        while True:
            try:
                return await call(remaining(deadline))
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, self.target)
                delay = retry_delay(error.code, delays, deadline)
                if delay is None:
                    raise error from exc
            log.debug("event=retry code=%s delay=%.3f", error.code.name, delay)
            await asyncio.sleep(delay)


class _BatchSource:
    """Pulls batches from a sync or async iterable, one ``await next()`` at a time."""

    def __init__(self, batches: Batches) -> None:
        self._async: AsyncIterator[Sequence[Example]] | None = None
        self._sync: Iterator[Sequence[Example]] | None = None
        if isinstance(batches, AsyncIterable):
            self._async = aiter(batches)
        else:
            self._sync = iter(batches)

    async def next(self) -> Sequence[Example] | None:
        """The next batch, or None at the end."""
        if self._async is not None:
            try:
                return await anext(self._async)
            except StopAsyncIteration:
                return None
        assert self._sync is not None
        return next(self._sync, None)
