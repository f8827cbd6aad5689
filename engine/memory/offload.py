"""Offload as hooks: weights in (pinned) host memory, on the GPU only while they are used.

Both mechanisms rest on `ParamGroup`: the parameters and buffers of one module (a DiT block, a
whole text encoder) stored once, back to back, in a host buffer, and materialised on the compute
device as one flat buffer whose storage is allocated before use and resized to zero after. Each
parameter stays the same `Parameter` object with the same shape, dtype, device and strides all
along (only its storage comes and goes), so compiled graphs, which read parameters as inputs and
guard on that metadata, stay valid: compiling and offloading compose in either order. (The blocks
must be compiled with `engine.optimize.compile_blocks`, which compiles `forward` only, so these
hooks run eagerly around the compiled code.)

- `LayerwiseOffload`: forward pre/post hooks on each DiT block. On CUDA, while block i computes on
  the compute stream, block i+1 is copied on a copy stream; CUDA events (never a host sync) make
  block i+1's compute wait for its copy, and the copy wait for the compute that last used its
  memory. A block's GPU copy is released right after its forward, so at most two offloaded blocks
  are on the GPU at once; the first `resident_blocks` stay resident. `prefetch=False` is the
  naive contrast: each block is copied on the compute stream, so copy and compute serialise.
  CFG batching changes nothing (a block runs once per step on the whole batch). Under sequence
  parallelism each rank attaches its own `LayerwiseOffload` to its own copy of the model and
  device; nothing here is process-global.
- `ComponentOffload`: a whole component (text encoder, VAE, or the DiT under "model" offload) on
  the GPU only while its stage runs, either around its forward (hooks) or around a stage.

On the CPU (compute device "cpu") the same code runs with synchronous copies: the tests use that
to check that offloaded and resident runs give bit-identical latents and that hooks fire in the
right order. What the CPU cannot show is the stream/event ordering under real concurrency; the
GPU benchmark (`benchmarks/bench_offload.py`) compares its outputs against the resident run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

ALIGNMENT = 256  # bytes; every tensor starts on a boundary kernels like (cuBLAS wants 16)


def _align(nbytes: int) -> int:
    return (nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class ParamGroup:
    """One module's parameters and buffers, resident in host memory, on `device` only when loaded.

    Construction moves the tensors' data into a (pinned, when CUDA is available) host buffer and
    points every parameter/buffer at a view of a device buffer whose storage is then freed. The
    module must not be modified (fused, cast, moved) afterwards.
    """

    def __init__(self, module: nn.Module, device: torch.device, *, pin: bool | None = None) -> None:
        self.device = device
        tensors = list(module.parameters()) + list(module.buffers())  # deduplicated (tied weights once)
        layout: list[tuple[torch.Tensor, int, int]] = []  # (tensor, byte offset, nbytes)
        total = 0
        for tensor in tensors:
            nbytes = tensor.numel() * tensor.element_size()
            layout.append((tensor, total, nbytes))
            total += _align(nbytes)
        self.nbytes = total
        if pin is None:
            pin = torch.cuda.is_available()
        self.host = torch.empty(total, dtype=torch.uint8, pin_memory=pin)  # [total] bytes
        self.buffer = torch.empty(total, dtype=torch.uint8, device=device)
        self._host_views: dict[int, torch.Tensor] = {}  # id(tensor) -> its values in `host`
        with torch.no_grad():
            for tensor, offset, nbytes in layout:
                flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
                self.host[offset : offset + nbytes].copy_(flat)
                self._host_views[id(tensor)] = self.host[offset : offset + nbytes].view(tensor.dtype).view(tensor.shape)
                view = self.buffer[offset : offset + nbytes].view(tensor.dtype).view(tensor.shape)
                tensor.data = view  # same Parameter object, new storage
        self._storage = self.buffer.untyped_storage()
        self._storage.resize_(0)
        self.loaded = False
        self.ready: torch.cuda.Event | None = None

    def host_view(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The host copy of one of this group's tensors (what every `load` copies from), or None.

        Editing it changes the weights from the next load on (how LoRA adapters are applied to
        offloaded weights); never edit it while a load may be in flight.
        """
        return self._host_views.get(id(tensor))

    def load(self, copy_stream: torch.cuda.Stream | None = None) -> None:
        """Allocate the device buffer and enqueue the host->device copy.

        The allocation is made on the current (compute) stream, so the caching allocator's
        stream-ordered reuse stays correct. With `copy_stream`, the copy runs there after the
        compute stream's work so far (which may have used this memory last) and `wait` must be
        called before the weights are used; without, it runs on the compute stream itself.
        """
        self._storage.resize_(self.nbytes)
        if copy_stream is None:
            self.buffer.copy_(self.host, non_blocking=True)
            self.ready = None
        else:
            compute = torch.cuda.current_stream(self.device)
            copy_stream.wait_stream(compute)
            with torch.cuda.stream(copy_stream):
                self.buffer.copy_(self.host, non_blocking=True)
                self.ready = torch.cuda.Event()
                self.ready.record(copy_stream)
        self.loaded = True

    def wait(self) -> None:
        """Make the compute stream wait for this group's copy (a GPU-side wait, not a host sync)."""
        if self.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(self.ready)
            self.ready = None

    def release(self) -> None:
        """Free the device copy; work already enqueued on the compute stream still sees it."""
        self._storage.resize_(0)
        self.loaded = False
        self.ready = None


class LayerwiseOffload:
    """Streams a DiT's blocks through the GPU; attach after fusing projections (see module doc).

    `blocks` are the transformer blocks in call order; the first `resident_blocks` stay on
    `device`. Everything else of the model (embeddings, output projection) must already be on
    `device`. `trace`, when a list, receives ("load"|"prefetch"|"wait"|"release", block index)
    in the order the hooks issue them (used by the tests).
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        device: torch.device,
        *,
        resident_blocks: int = 0,
        prefetch: bool = True,
        pin: bool | None = None,
        trace: list[tuple[str, int]] | None = None,
    ) -> None:
        if not 0 <= resident_blocks <= len(blocks):
            raise ValueError(f"resident_blocks must be in [0, {len(blocks)}], got {resident_blocks}")
        self.device = device
        self.prefetch = prefetch
        self.trace = trace
        self.groups: list[ParamGroup | None] = []
        for index, block in enumerate(blocks):
            if index < resident_blocks:
                block.to(device)
                self.groups.append(None)
            else:
                self.groups.append(ParamGroup(block, device, pin=pin))
        # `prefetch` may be switched later (the benchmark times both modes on one copy of the weights).
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._handles = []
        for index, block in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(index)))
            self._handles.append(block.register_forward_hook(self._post_hook(index)))

    def host_view(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The host copy of an offloaded block's tensor (see `ParamGroup.host_view`), or None."""
        for group in self.groups:
            view = group.host_view(tensor) if group is not None else None
            if view is not None:
                return view
        return None

    @property
    def offloaded_bytes(self) -> int:
        return sum(group.nbytes for group in self.groups if group is not None)

    def _log(self, event: str, index: int) -> None:
        if self.trace is not None:
            self.trace.append((event, index))

    def _next_offloaded(self, index: int) -> int | None:
        return next((j for j in range(index + 1, len(self.groups)) if self.groups[j] is not None), None)

    def _pre_hook(self, index: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: object) -> None:
            with torch.no_grad():
                group = self.groups[index]
                stream = self.copy_stream if self.prefetch else None  # naive: copy on the compute stream
                if group is not None and not group.loaded:  # first offloaded block of a forward, or naive
                    self._log("load", index)
                    group.load(stream)
                if self.prefetch:
                    following = self._next_offloaded(index)
                    if following is not None and not self.groups[following].loaded:  # type: ignore[union-attr]
                        self._log("prefetch", following)
                        self.groups[following].load(stream)  # type: ignore[union-attr]
                if group is not None:
                    self._log("wait", index)
                    group.wait()

        return hook

    def _post_hook(self, index: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: object, output: object) -> None:
            group = self.groups[index]
            if group is not None:
                self._log("release", index)
                group.release()

        return hook

    def release_all(self) -> None:
        """Free every offloaded block's device copy (after an interrupted forward, for example)."""
        for group in self.groups:
            if group is not None and group.loaded:
                group.release()


class ComponentOffload:
    """A whole module in host memory, on `device` only inside `on_device()` (or its own forward).

    Loading copies on the compute stream: nothing useful could overlap a whole component's copy.
    Nested or repeated `on_device` calls load once.
    """

    def __init__(self, module: nn.Module, device: torch.device, *, pin: bool | None = None) -> None:
        self.module = module
        self.group = ParamGroup(module, device, pin=pin)
        self._depth = 0

    def host_view(self, tensor: torch.Tensor) -> torch.Tensor | None:
        return self.group.host_view(tensor)

    @contextlib.contextmanager
    def on_device(self) -> Iterator[nn.Module]:
        if self._depth == 0:
            with torch.no_grad():
                self.group.load()
        self._depth += 1
        try:
            yield self.module
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.group.release()

    def attach_to_forward(self) -> ComponentOffload:
        """Load around every call of the module's forward (for the text encoder: a cache hit
        never calls it, so never loads it)."""
        contexts: list[contextlib.AbstractContextManager[nn.Module]] = []

        def before(module: nn.Module, args: object) -> None:
            context = self.on_device()
            context.__enter__()
            contexts.append(context)

        def after(module: nn.Module, args: object, output: object) -> None:
            contexts.pop().__exit__(None, None, None)

        self.module.register_forward_pre_hook(before)
        self.module.register_forward_hook(after, always_call=True)
        return self
