"""FLUX.1 text-to-image orchestrator: a Triton Python-backend model that drives the four networks
through BLS (business logic scripting), written into the repository by `fluxbuild package`.

Per dynamic batch: validate each request on its own (a refusal is answered at once, through the
request's response sender) -> group the prompts that share size, steps and T5 length -> per group,
fewest steps first (split at the networks' largest batch): tokenize -> CLIP and T5 at the same time
(async BLS) -> FlowMatch Euler denoising loop on the transformer -> VAE decoder -> 8-bit RGB; each
request answered as soon as its images are done. Across the instances, the step scheduler runs the
job with the fewest steps left first (`StepScheduler`), and a job whose clients all cancelled stops
before its next step.
The math follows diffusers' FluxPipeline to the float precision of each operation (see
`FlowMatchEuler`), and the initial noise is "fluxbuild noise v1" (docs/noise.md), so a seed gives
the image `fluxbuild generate` gives locally.

On the gpu target the tensors stay on the device between networks: BLS outputs are handed on by
DLPack without a host copy, the Euler update runs in torch on the device, and only the final uint8
image comes back to the host. Each host<->device copy is counted (log line and the metric
`flux_host_device_copies_total`). The tensor code of both targets is flux_arrays.py, next to this file.

Settings come from this model's config.pbtxt `parameters` (written by `fluxbuild package`); the
request rules are the table `request_rules` (generate::request::Limits in the Rust code, which
`fluxbuild generate --server` checks with the same rules): every request is checked against it
before any batch work, and each refusal names its rule as `[rule NAME]`, as the CLI does.

Health: before any batch work, every network must have a ready model; otherwise the requests are
answered UNAVAILABLE (HTTP 503), as are network calls that meet a dead backend stub.
"""

import asyncio
import fcntl
import json
import math
import os
import re
import secrets
import struct
import tempfile
import time

import flux_arrays
import flux_bytes
import flux_fallback
import flux_params
import numpy as np
import triton_python_backend_utils as pb_utils
from flux_arrays import pack, unpack
from tokenizers import Tokenizer

NETWORKS = ("clip", "t5", "transformer", "vae_decoder")
LATENT_CHANNELS = 16
VAE_SCALE = 8
# Height and width must be multiples of this: the VAE's 8x and the transformer's 2x2 patches.
SIZE_MULTIPLE = 16


class RequestError(Exception):
    """A bad request: only that request fails (INVALID_ARG, HTTP 400)."""

    def __init__(self, rule, message):
        super().__init__(f"{message} [rule {rule}]")


class Cancelled(Exception):
    """Every client of a batch gave up: the denoising loop stops (the message says where)."""


class NetworkError(Exception):
    """A network failed; the message names it. `unavailable`: not ready or its backend died
    (UNAVAILABLE, HTTP 503: try again later), else INTERNAL."""

    def __init__(self, network, message, out_of_memory=False, unavailable=False):
        super().__init__(f"network '{network}' failed: {message}")
        self.network = network
        self.out_of_memory = out_of_memory
        self.unavailable = unavailable


def is_backend_gone(message):
    text = message.lower()
    return any(s in text for s in ("stub process", "not ready", "unavailable", "not found"))


# The C0 and C1 control characters (Unicode category Cc, Rust's char::is_control) but tab and line breaks.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def check_prompt(index, data, rules):
    """generate::request::check_prompt: length before decoding, UTF-8, control characters, emptiness."""
    if len(data) > rules["max_prompt_bytes"]:
        raise RequestError("prompt_too_long", f"prompt {index} is {len(data)} bytes, more than the {rules['max_prompt_bytes']} allowed")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError("prompt_not_utf8", f"prompt {index} is not valid UTF-8 ({e.reason} at byte {e.start})")
    control = _CONTROL.search(text)
    if control:
        raise RequestError("prompt_control", f"prompt {index} contains the control character U+{ord(control.group()):04X}")
    if not text.strip():
        raise RequestError("prompt_empty", f"prompt {index} is empty or only whitespace")
    return text


def is_out_of_memory(message):
    text = message.lower()
    return any(s in text for s in ("out of memory", "out_of_memory", "failed to allocate", "bad_alloc", "cudaerrormemoryallocation"))


# ---- fluxbuild noise v1 ------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def noise_v1(seed, shape):
    """SplitMix64 words from `seed`, Box-Muller on each pair in float64, every value cast to
    float32, filling `shape` in C order (an odd count drops the last z1)."""
    count = int(np.prod(shape))
    pairs = (count + 1) // 2
    with np.errstate(over="ignore"):
        steps = np.arange(1, 2 * pairs + 1, dtype=np.uint64)
        z = np.uint64(seed % (1 << 64)) + steps * _GOLDEN  # uint64 arrays wrap modulo 2^64
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    a, b = z[0::2], z[1::2]
    u1 = ((a >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * 2.0**-53
    u2 = (b >> np.uint64(11)).astype(np.float64) * 2.0**-53
    r = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * math.pi * u2
    values = np.empty(2 * pairs, dtype=np.float32)
    values[0::2] = (r * np.cos(angle)).astype(np.float32)
    values[1::2] = (r * np.sin(angle)).astype(np.float32)
    return values[:count].reshape(shape)


# ---- scheduler ---------------------------------------------------------------------------------


class FlowMatchEuler:
    """diffusers' FlowMatchEulerDiscreteScheduler as FluxPipeline drives it: linspace in float64,
    cast to float32, shifted in float32 (mu from calculate_shift in float64), terminal 0 appended;
    the transformer sees (1000*sigma)/1000 in float32; Euler steps in float32."""

    def __init__(self, config):
        self.train_timesteps = float(config.get("num_train_timesteps", 1000))
        self.shift = float(config.get("shift", 1.0))
        self.dynamic = bool(config.get("use_dynamic_shifting", False))
        self.base_shift = float(config.get("base_shift", 0.5))
        self.max_shift = float(config.get("max_shift", 1.15))
        self.base_seq_len = float(config.get("base_image_seq_len", 256))
        self.max_seq_len = float(config.get("max_image_seq_len", 4096))
        self.shift_type = config.get("time_shift_type", "exponential")
        self.shift_terminal = config.get("shift_terminal")

    def mu(self, image_seq_len):
        m = (self.max_shift - self.base_shift) / (self.max_seq_len - self.base_seq_len)
        b = self.base_shift - m * self.base_seq_len
        return image_seq_len * m + b

    def sigmas(self, steps, image_seq_len):
        f32 = np.float32
        sigmas = np.linspace(1.0, 1.0 / steps, steps).astype(f32)
        if self.dynamic:
            mu = self.mu(image_seq_len)
            numerator = f32(math.exp(mu) if self.shift_type == "exponential" else mu)
            sigmas = numerator / (numerator + (f32(1.0) / sigmas - f32(1.0)))
        else:
            sigmas = f32(self.shift) * sigmas / (f32(1.0) + f32(self.shift - 1.0) * sigmas)
        if self.shift_terminal:
            scale = (f32(1.0) - sigmas[-1]) / f32(1.0 - self.shift_terminal)
            sigmas = f32(1.0) - (f32(1.0) - sigmas) / scale
        return np.append(sigmas.astype(f32), f32(0.0))

    def model_timestep(self, sigma):
        return np.float32(np.float32(sigma) * np.float32(self.train_timesteps)) / np.float32(1000.0)


# ---- step scheduling across the flux instances -------------------------------------------------


class StepScheduler:
    """Shortest remaining work first, one denoising step at a time, across the `flux` instances.

    Each instance is its own process that runs one job (a chunk of prompts) at a time; on a
    machine with few cores (or one GPU) concurrent jobs slow each other down, so a 4-step request
    next to a 60-step one would take much longer than alone. Each instance holds a slot in a table
    shared by the instances (a small file in /dev/shm, guarded by flock; a dead process's slot is
    ignored and reused), where its job, if any, says how many steps it has left. Before each network
    phase a job waits until no live job has fewer steps left; jobs with equally many steps left run
    together (the networks batch them). A job registered longer than STARVATION_S goes first
    whatever its steps (no starvation). The last instance to finalize removes the file.

    The table's first record counts the steps started by all jobs: a job logs how many steps of
    other jobs started while it ran (0 when it always had the fewest steps left).

    At most `running_jobs` jobs run at once: there are more instances than that, so that while
    every running job holds its slot a free instance still takes new requests at once and refuses
    the bad ones (a valid one waits in its instance for a running slot, fewest steps first)."""

    # pid, job token, steps left (-1: no job), registration time (ns), state (WAITING or RUNNING)
    RECORD = struct.Struct("<qqqqq")
    SLOTS = 256
    IDLE = -1
    WAITING = 0
    RUNNING = 1
    POLL_S = 0.004
    CANCEL_POLL_S = 0.02
    STARVATION_S = 60.0

    def __init__(self, model_name, running_jobs, shortest_first=True):
        # `shortest_first` False: every job runs its steps at once, as without this scheduler (the
        # config parameter step_order "concurrent", for comparisons); the table still counts steps.
        self.shortest_first = shortest_first
        self.running_jobs = running_jobs
        # One table per server (the stubs' parent is the tritonserver process) and model.
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        self.path = os.path.join(folder, f"fluxbuild-steps-{os.getppid()}-{model_name}")
        self.pid = os.getpid()
        self.token = 0
        size = self.RECORD.size * (self.SLOTS + 1)
        while True:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                # The file may have been removed by the last instance of a model being unloaded
                # between our open and lock: then open the new one.
                if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    if os.fstat(self.fd).st_size < size:
                        os.ftruncate(self.fd, size)
                    records = self._read()
                    free = [i for i in range(1, self.SLOTS + 1) if records[i][0] == 0 or not self._alive(records[i][0])]
                    if not free:
                        raise pb_utils.TritonModelException(f"{self.path}: more than {self.SLOTS} flux instances")
                    self.slot = free[0]
                    self._write(self.slot, (self.pid, 0, self.IDLE, 0, self.WAITING))
                    return
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)

    def close(self):
        with self._locked():
            self._write(self.slot, (0, 0, 0, 0, 0))
            records = self._read()
            if not any(r[0] and self._alive(r[0]) for r in records[1:]):
                os.unlink(self.path)
        os.close(self.fd)

    def _locked(self):
        fd = self.fd

        class Lock:
            def __enter__(self):
                fcntl.flock(fd, fcntl.LOCK_EX)

            def __exit__(self, *exc):
                fcntl.flock(fd, fcntl.LOCK_UN)

        return Lock()

    def _read(self):
        data = os.pread(self.fd, self.RECORD.size * (self.SLOTS + 1), 0)
        return [self.RECORD.unpack_from(data, i * self.RECORD.size) for i in range(self.SLOTS + 1)]

    def _write(self, index, record):
        os.pwrite(self.fd, self.RECORD.pack(*record), index * self.RECORD.size)

    @staticmethod
    def _alive(pid):
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    async def admit(self, steps, cancelled):
        """Starts this instance's job with `steps` left once fewer than `running_jobs` jobs run and
        no waiting job goes before it. Returns (seconds waited, the global step count at the
        start), or None once `cancelled()` says so while waiting."""
        started = time.monotonic()
        with self._locked():
            self.token += 1
            self._write(self.slot, (self.pid, self.token, steps, time.monotonic_ns(), self.WAITING))
        next_cancel_check = started + self.CANCEL_POLL_S
        while True:
            with self._locked():
                records = self._read()
                if self._may_start(records):
                    self._write(self.slot, records[self.slot][:4] + (self.RUNNING,))
                    return time.monotonic() - started, records[0][0]
            now = time.monotonic()
            if now >= next_cancel_check:
                next_cancel_check = now + self.CANCEL_POLL_S
                if cancelled():
                    self.unregister()
                    return None
            await asyncio.sleep(self.POLL_S)

    def unregister(self):
        """Ends the job; returns the global step count at the end."""
        with self._locked():
            self._write(self.slot, (self.pid, 0, self.IDLE, 0, self.WAITING))
            return self._read()[0][0]

    def _key(self, record, now):
        _, _, left, since, _ = record
        starving = now - since > self.STARVATION_S * 1e9
        return (0 if starving else 1, left)

    def _others(self, records, state):
        """The other live jobs in `state`."""
        for i in range(1, self.SLOTS + 1):
            record = records[i]
            if i != self.slot and record[0] != 0 and record[2] != self.IDLE and record[4] == state and self._alive(record[0]):
                yield record

    def _may_start(self, records):
        if sum(1 for _ in self._others(records, self.RUNNING)) >= self.running_jobs:
            return False
        now = time.monotonic_ns()
        mine = self._key(records[self.slot], now) + (records[self.slot][3],)
        return all(self._key(r, now) + (r[3],) >= mine for r in self._others(records, self.WAITING))

    def _may_run(self, records, left):
        if not self.shortest_first:
            return True
        now = time.monotonic_ns()
        mine = self._key(records[self.slot][:2] + (left,) + records[self.slot][3:], now)
        return all(self._key(r, now) >= mine for r in self._others(records, self.RUNNING))

    async def turn(self, left, counts_as_step, cancelled):
        """Waits until this job (with `left` steps to go) has the fewest steps left, then takes its
        turn (counted as a step when `counts_as_step`). Returns the seconds waited, or None once
        `cancelled()` says so while waiting."""
        started = time.monotonic()
        next_cancel_check = started + self.CANCEL_POLL_S
        while True:
            with self._locked():
                records = self._read()
                since = records[self.slot][3]
                self._write(self.slot, (self.pid, self.token, left, since, self.RUNNING))
                if self._may_run(records, left):
                    if counts_as_step:
                        self._write(0, (records[0][0] + 1, 0, 0, 0, 0))
                    return time.monotonic() - started
            now = time.monotonic()
            if now >= next_cancel_check:
                next_cancel_check = now + self.CANCEL_POLL_S
                if cancelled():
                    return None
            await asyncio.sleep(self.POLL_S)


# ---- requests ----------------------------------------------------------------------------------


class Item:
    """One prompt of a request, with its settings."""

    __slots__ = ("request", "source", "index", "prompt", "height", "width", "steps", "guidance", "seed", "max_sequence_length", "noise", "models", "precision_set")

    def group_key(self):
        return (self.height, self.width, self.steps, self.max_sequence_length)


class JobProgress:
    """What one job of the step scheduler did: steps taken, seconds waited for shorter jobs."""

    __slots__ = ("steps", "waited")

    def __init__(self):
        self.steps = 0
        self.waited = 0.0


class Reply:
    """One request's answer, sent through its response sender as soon as it is complete."""

    def __init__(self, request):
        self.sender = request.get_response_sender()
        self.images = []
        self.seeds = []
        self.made_by = []
        self.left = 0
        self.done = False

    def expect(self, items):
        self.images = [None] * len(items)
        self.made_by = [None] * len(items)
        self.seeds = [item.seed for item in items]
        self.left = len(items)

    def fail(self, message, code):
        """Answers with an error (INVALID_ARG: 400, UNAVAILABLE: 503, CANCELLED, else 500), once."""
        if not self.done:
            self.done = True
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
            self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def image(self, item, image):
        """Records one prompt's image; answers when it was the last. Returns whether it answered."""
        if self.done:
            return False
        self.images[item.index] = image
        self.made_by[item.index] = flux_fallback.describe(item.precision_set, item.models)
        self.left -= 1
        if self.left:
            return False
        self.done = True
        outputs = [
            pb_utils.Tensor("image", np.stack(self.images)),
            pb_utils.Tensor("seed", np.array(self.seeds, dtype=np.int64).reshape(-1, 1)),
            pb_utils.Tensor("models", np.array(self.made_by, dtype=np.object_).reshape(-1, 1)),
        ]
        self.sender.send(pb_utils.InferenceResponse(outputs), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return True


class TritonPythonModel:
    def initialize(self, args):
        self.settings = s = flux_params.read(args["model_config"])
        flux_bytes.install(s.request_rules["max_prompt_bytes"])
        here = os.path.join(args["model_repository"], args["model_version"])
        self.clip_tokenizer = self._tokenizer(os.path.join(here, "tokenizer", "tokenizer.json"), s.clip_pad_token)
        self.t5_tokenizer = self._tokenizer(os.path.join(here, "tokenizer_2", "tokenizer.json"), s.t5_pad_token)
        with open(os.path.join(here, "scheduler", "scheduler_config.json")) as f:
            self.scheduler = FlowMatchEuler(json.load(f))
        self.precision_sets = flux_fallback.PrecisionSets({n: s.models_of(n) for n in NETWORKS})
        self.new_arrays = flux_arrays.for_instance(s.target, args, s.torch_on_cpu, s.input_dtypes)
        self.copies = pb_utils.MetricFamily(
            name="flux_host_device_copies_total",
            description="Tensor copies between host and device memory made by the flux orchestrator",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.copies_h2d = self.copies.Metric(labels={"direction": "host_to_device"})
        self.copies_d2h = self.copies.Metric(labels={"direction": "device_to_host"})
        # The families must outlive their metrics: keep both.
        self.images_family = pb_utils.MetricFamily(
            name="flux_images_total", description="Images generated by the flux orchestrator", kind=pb_utils.MetricFamily.COUNTER
        )
        self.images = self.images_family.Metric(labels={})
        self.logger = pb_utils.Logger
        self.step_scheduler = StepScheduler(args["model_name"], s.running_jobs, shortest_first=s.step_order == "shortest_first")

    def finalize(self):
        self.step_scheduler.close()

    @staticmethod
    def _tokenizer(path, pad_token):
        tokenizer = Tokenizer.from_file(path)
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise pb_utils.TritonModelException(f"{path}: no pad token {pad_token!r}")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer, pad_id, pad_token, {}

    def _arrays(self):
        return self.new_arrays()

    def _check_networks(self):
        """Every network needs a ready model (its own or a fallback): else UNAVAILABLE, before any work."""
        for network in NETWORKS:
            if not any(pb_utils.is_model_ready(model_name=m) for m in self.settings.models_of(network)):
                names = ", ".join(f"'{m}'" for m in self.settings.models_of(network))
                raise NetworkError(network, f"no model of it is ready ({names}: unloaded, loading or failed)", unavailable=True)

    # ---- parsing and validation ------------------------------------------------------------

    def _parse(self, request, index):
        """The request's prompts as Items, checked against the rules table (the CLI's order)."""
        s, rules = self.settings, self.settings.request_rules
        prompt = pb_utils.get_input_tensor_by_name(request, "prompt")
        if prompt is None or prompt.as_numpy().size == 0:
            raise RequestError("prompt_missing", "no prompt given (input 'prompt', TYPE_STRING [1] per image)")
        # bytes, or an Oversized prompt that flux_bytes left uncopied (check_prompt refuses it by length).
        raw = [p if isinstance(p, (bytes, flux_bytes.Oversized)) else str(p).encode() for p in prompt.as_numpy().reshape(-1)]
        prompts = [check_prompt(i, p, rules) for i, p in enumerate(raw)]
        n = len(prompts)

        def values(name, kind, default):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                return [default] * n
            array = tensor.as_numpy().reshape(-1)
            if array.size != n:
                raise RequestError("one_value_per_prompt", f"input '{name}' has {array.size} values for {n} prompts (one per prompt)")
            return [kind(v) for v in array]

        heights = values("height", int, s.default_height)
        widths = values("width", int, s.default_width)
        if len(set(heights)) > 1 or len(set(widths)) > 1:
            raise RequestError("one_size_per_request", "every prompt of one request must ask for the same height and width (send different sizes as separate requests)")
        height, width = heights[0], widths[0]
        multiple = rules["side_multiple"]
        for name, value, low, high in (("height", height, rules["min_height"], rules["max_height"]), ("width", width, rules["min_width"], rules["max_width"])):
            if value % multiple:
                raise RequestError("size_multiple", f"{name} {value} is not a multiple of {multiple}")
            if not low <= value <= high:
                raise RequestError("size_range", f"{name} {value} is out of range {low}..={high}")
        if height * width > rules["max_image_pixels"]:
            raise RequestError("image_pixels", f"{width}x{height} is {height * width} pixels, more than the {rules['max_image_pixels']} one image may have")
        steps = values("steps", int, s.default_steps)
        guidance = values("guidance", float, s.default_guidance)
        lengths = values("max_sequence_length", int, s.default_max_sequence_length)
        for i in range(n):
            if not 1 <= steps[i] <= rules["max_steps"]:
                raise RequestError("steps_range", f"steps {steps[i]} is out of range 1..={rules['max_steps']}")
            if not (math.isfinite(guidance[i]) and rules["min_guidance"] <= guidance[i] <= rules["max_guidance"]):
                raise RequestError("guidance_range", f"guidance {guidance[i]} is out of range {rules['min_guidance']}..={rules['max_guidance']}")
            if not rules["min_sequence_length"] <= lengths[i] <= rules["max_sequence_length"]:
                raise RequestError(
                    "sequence_length_range",
                    f"max sequence length {lengths[i]} is out of range {rules['min_sequence_length']}..={rules['max_sequence_length']}",
                )
        noise = pb_utils.get_input_tensor_by_name(request, "noise")
        seed = pb_utils.get_input_tensor_by_name(request, "seed")
        if noise is not None and seed is not None:
            raise RequestError("seed_and_noise", "--seed and --noise (the inputs seed and noise) both choose the initial noise: give one")
        if noise is not None:
            seeds = [-1] * n  # no seed: the image came from the given noise
            noise = noise.as_numpy()
            expected = (n, LATENT_CHANNELS, height // VAE_SCALE, width // VAE_SCALE)
            if tuple(noise.shape) != expected:
                raise RequestError("noise_shape", f"input 'noise' has shape {list(noise.shape)}, expected {list(expected)} ([prompts, 16, height/8, width/8])")
            if not np.all(np.isfinite(noise)):
                raise RequestError("noise_finite", "input 'noise' holds non-finite values")
        else:
            # A random seed by default (returned), so that raw requests do not all give one image.
            base = secrets.randbits(63)
            seeds = values("seed", int, None)
            seeds = [base + i if v is None else v for i, v in enumerate(seeds)]
        items = []
        for i in range(n):
            item = Item()
            item.request, item.source, item.index, item.prompt = index, request, i, prompts[i]
            item.height, item.width, item.steps, item.guidance = height, width, steps[i], guidance[i]
            item.seed, item.max_sequence_length = seeds[i], lengths[i]
            item.noise = None if noise is None else noise[i].astype(np.float32)
            items.append(item)
        return items

    # ---- execution -------------------------------------------------------------------------

    async def execute(self, requests):
        """Each request is answered as soon as its own outcome is known (a response sender per
        request, also for this non-decoupled model): a refusal at once, before any network work,
        an image once its group is done. Groups run fewest steps first; across instances the step
        scheduler runs the job with the fewest steps left."""
        flux_bytes.release_memory()
        replies = [Reply(request) for request in requests]
        try:
            await self._answer(requests, replies)
        finally:
            for reply in replies:  # an unforeseen failure still answers every request
                reply.fail("flux orchestrator failed before answering", pb_utils.TritonError.INTERNAL)
        return None

    async def _answer(self, requests, replies):
        groups = {}
        for r, request in enumerate(requests):
            try:
                items = self._parse(request, r)
            except RequestError as e:
                replies[r].fail(str(e), pb_utils.TritonError.INVALID_ARG)
                continue
            except Exception as e:  # a malformed tensor the checks above did not foresee
                replies[r].fail(f"bad request: {e}", pb_utils.TritonError.INVALID_ARG)
                continue
            replies[r].expect(items)
            for item in items:
                groups.setdefault(item.group_key(), []).append(item)
        if not groups:
            # Every request refused: return at once. Triton frees this instance only when execute
            # returns, and a client's next request that finds no free instance can wait up to the
            # dynamic batcher's idle timeout (500 ms, seen in traces) for it.
            return
        arrays = self._arrays()
        try:
            if groups:
                self._check_networks()
        except NetworkError as e:
            for reply in replies:
                reply.fail(str(e), pb_utils.TritonError.UNAVAILABLE)
            groups = {}
        count = sum(len(i) for i in groups.values())
        # Fewest steps (then fewest pixels) first: short work is not held up by long work.
        for key in sorted(groups, key=lambda k: (k[2], k[0] * k[1], k[3])):
            items = [i for i in groups[key] if not replies[i.request].done]
            if not items:
                continue
            try:
                results = await self._run_split(arrays, items)
            except Cancelled as e:
                for item in items:
                    replies[item.request].fail(f"cancelled by the client{e}", pb_utils.TritonError.CANCELLED)
                continue
            except NetworkError as e:
                code = pb_utils.TritonError.UNAVAILABLE if e.unavailable else pb_utils.TritonError.INTERNAL
                for item in items:
                    replies[item.request].fail(str(e), code)
                continue
            except Exception as e:
                for item in items:
                    replies[item.request].fail(f"flux orchestrator failed: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL)
                continue
            for item, image in zip(items, results):
                if replies[item.request].image(item, image):
                    self.images.increment(len(replies[item.request].images))
        self.copies_h2d.increment(arrays.h2d)
        self.copies_d2h.increment(arrays.d2h)
        self.logger.log_info(
            f"flux: {len(requests)} requests, {count} prompts in {len(groups)} groups on {arrays.device}; "
            f"host<->device copies: {arrays.h2d} host->device, {arrays.d2h} device->host"
        )

    async def _run_split(self, arrays, items):
        """Runs items in chunks the networks accept and the memory budget allows (pixels per
        batch); halves a chunk that runs out of memory."""
        pixels = items[0].height * items[0].width if items else 1
        limit = max(1, min(self.settings.network_max_batch, self.settings.max_batch_pixels // pixels))
        results = []
        for start in range(0, len(items), limit):
            results.extend(await self._run_retrying(arrays, items[start : start + limit]))
        return results

    async def _run_retrying(self, arrays, items):
        """The chunk on the first precision set whose models are all ready; out of memory: the
        chunk halved, and a single prompt on the next set (flux_fallback.py)."""
        sets = self.precision_sets.ready(lambda m: pb_utils.is_model_ready(model_name=m))
        if not sets:
            raise NetworkError("flux", "no precision set has all its models ready", unavailable=True)
        for k, models in sets:
            if k > 0:
                self.logger.log_warn(f"flux: {len(items)} prompts on fallback precision set {k}: {models}")
            for item in items:
                item.models, item.precision_set = models, k
            try:
                return await self._run_chunk(arrays, items)
            except NetworkError as e:
                if not e.out_of_memory:
                    raise
                if len(items) > 1:
                    half = len(items) // 2
                    self.logger.log_warn(f"flux: {e}; retrying the batch of {len(items)} as {half} + {len(items) - half}")
                    return await self._run_retrying(arrays, items[:half]) + await self._run_retrying(arrays, items[half:])
                last = e
        raise last

    def _tokenize(self, tokenizer, prompts, length):
        """Token ids [B, length] as FluxPipeline's tokenizers give them: special tokens added,
        truncated to `length`, padded on the right with the pad token."""
        return np.array([e.ids for e in self._fitted(tokenizer, length).encode_batch(prompts, add_special_tokens=True)], dtype=np.int64)

    def _fitted(self, tokenizer, length):
        base, pad_id, pad_token, fitted = tokenizer
        if length not in fitted:
            tok = Tokenizer.from_str(base.to_str())
            tok.enable_truncation(max_length=length)
            tok.enable_padding(length=length, pad_id=pad_id, pad_token=pad_token, direction="right")
            fitted[length] = tok
        return fitted[length]

    async def _infer(self, xp, items, network, inputs, outputs):
        """One BLS call to the network's model in the chunk's precision set, with the clients'
        request ids, the first client's trace (Triton traces the call as its child), a timeout,
        and outputs where the arrays in use want them."""
        model = items[0].models[network]  # the chunk's precision set: never mixed within an image
        request_id = ",".join(sorted({i.source.request_id() for i in items if i.source.request_id()}))
        request = pb_utils.InferenceRequest(
            model_name=model,
            inputs=inputs,
            requested_output_names=outputs,
            request_id=request_id,
            timeout=self.settings.network_timeout_ms * 1000,
            preferred_memory=xp.preferred_memory(),
            trace=items[0].source.trace(),
        )
        response = await request.async_exec()
        if response.has_error():
            message = response.error().message()
            raise NetworkError(network, message, out_of_memory=is_out_of_memory(message), unavailable=is_backend_gone(message))
        return [pb_utils.get_output_tensor_by_name(response, name) for name in outputs]

    async def _run_chunk(self, xp, items):
        """One chunk as one job of the step scheduler (logged: time, waits, other jobs' steps)."""
        first = items[0]
        started = time.monotonic()
        job = JobProgress()
        clients = [i.source for i in items]
        admitted = await self.step_scheduler.admit(first.steps, lambda: all(c.is_cancelled() for c in clients))
        if admitted is None:
            self.logger.log_info(f"flux: every client of a batch of {len(items)} cancelled while it waited for a running slot")
            raise Cancelled(" (before its first step, waiting for a running slot)")
        slot_wait, steps_before = admitted
        try:
            return await self._run_job(xp, items, job)
        finally:
            others = self.step_scheduler.unregister() - steps_before - job.steps
            self.logger.log_info(
                f"flux: job of {len(items)} prompts, {first.steps} steps: waited {slot_wait * 1e3:.0f} ms for a running slot, "
                f"ran {job.steps} steps in {(time.monotonic() - started - slot_wait) * 1e3:.0f} ms, "
                f"waited {job.waited * 1e3:.0f} ms for jobs with fewer steps left; {others} steps of other jobs started meanwhile"
            )

    async def _turn(self, job, items, left, counts_as_step):
        """Waits for the step scheduler's turn; raises Cancelled once every client gave up."""
        clients = [i.source for i in items]

        def cancelled():
            return all(c.is_cancelled() for c in clients)

        waited = None if cancelled() else await self.step_scheduler.turn(left, counts_as_step, cancelled)
        if waited is None:
            steps = items[0].steps
            self.logger.log_info(f"flux: every client of a batch of {len(items)} cancelled; stopped after {job.steps} of {steps} steps")
            raise Cancelled(f" (stopped after {job.steps} of {steps} steps)")
        job.waited += waited
        job.steps += int(counts_as_step)

    async def _run_job(self, xp, items, job):
        s = self.settings
        first = items[0]
        b, height, width = len(items), first.height, first.width
        rows, cols = height // SIZE_MULTIPLE, width // SIZE_MULTIPLE
        length = first.max_sequence_length
        prompts = [i.prompt for i in items]
        clip_ids = self._tokenize(self.clip_tokenizer, prompts, s.clip_length)
        t5_ids = self._tokenize(self.t5_tokenizer, prompts, length)

        await self._turn(job, items, first.steps, counts_as_step=False)
        (pooled,), (text,) = await asyncio.gather(
            self._infer(xp, items, "clip", [xp.to_input("input_ids", clip_ids)], ["pooled_embeddings"]),
            self._infer(xp, items, "t5", [xp.to_input("input_ids", t5_ids)], ["text_embeddings"]),
        )
        # Handed to the transformer as they came (no host round trip on the gpu target).
        pooled = xp.from_output(pooled)
        text = xp.from_output(text)

        noise = np.stack([i.noise if i.noise is not None else noise_v1(i.seed, (LATENT_CHANNELS, 2 * rows, 2 * cols)) for i in items])
        latent_dtype = s.input_dtypes["hidden_states"]
        latents = xp.cast(pack(xp.upload(noise), rows, cols), latent_dtype)
        img_ids = xp.image_ids(rows, cols, s.input_dtypes["img_ids"])
        txt_ids = xp.full((length, 3), 0.0, s.input_dtypes["txt_ids"])
        guidance = None
        if "guidance" in s.input_dtypes:
            guidance = xp.vector([i.guidance for i in items], s.input_dtypes["guidance"])

        sigmas = self.scheduler.sigmas(first.steps, rows * cols)
        for step in range(first.steps):
            await self._turn(job, items, first.steps - step, counts_as_step=True)
            timestep = xp.full((b,), self.scheduler.model_timestep(sigmas[step]), s.input_dtypes["timestep"])
            inputs = [
                xp.to_input("hidden_states", latents),
                xp.to_input("encoder_hidden_states", xp.cast(text, s.input_dtypes["encoder_hidden_states"])),
                xp.to_input("pooled_projections", xp.cast(pooled, s.input_dtypes["pooled_projections"])),
                xp.to_input("timestep", timestep),
                xp.to_input("img_ids", img_ids),
                xp.to_input("txt_ids", txt_ids),
            ]
            if guidance is not None:
                inputs.append(xp.to_input("guidance", guidance))
            (velocity,) = await self._infer(xp, items, "transformer", inputs, ["noise_pred"])
            velocity = xp.float32(xp.from_output(velocity))
            dt = float(np.float32(sigmas[step + 1] - sigmas[step]))  # exact in float32: both sides compute in float32
            latents = xp.cast(xp.float32(latents) + velocity * dt, latent_dtype)

        latent = unpack(xp.float32(latents), rows, cols) / s.vae_scaling_factor + s.vae_shift_factor  # float32, as diffusers
        await self._turn(job, items, 0, counts_as_step=False)
        (decoded,) = await self._infer(xp, items, "vae_decoder", [xp.to_input("latent", xp.cast(latent, s.input_dtypes["latent"]))], ["images"])
        pixels = xp.download(xp.to_uint8_hwc(xp.from_output(decoded)))
        if pixels.shape[1:] != (height, width, 3):
            raise NetworkError("vae_decoder", f"returned images of shape {list(pixels.shape[1:3])}, expected [{height}, {width}]")
        return list(pixels)
