"""Video stage: probe a recording, place its segments, sample their frames (PyAV on CPU, DALI on GPU)."""

from biovl_core.video.container import (
    ALLOWED_DEMUXERS,
    CANONICAL_EXTENSIONS,
    canonical_extension,
    video_sha256,
)
from biovl_core.video.dali import DALISampler
from biovl_core.video.decoders import (
    DecoderChoice,
    choose_decoder,
    dali_available,
    dali_unavailable_reason,
    get_sampler,
)
from biovl_core.video.index import INDEX_SOURCES, ContainerIndex, container_index
from biovl_core.video.info import VideoInfo, frame_index_at, frame_times, probe
from biovl_core.video.plan import (
    PacketIndex,
    ReadPlan,
    index_packets,
    packet_index_from_arrays,
    plan_reads,
    write_clip,
)
from biovl_core.video.pyav import PyAVSampler
from biovl_core.video.sampler import SAMPLER_NAMES, DecodeStats, FrameSampler
from biovl_core.video.segments import (
    MIN_TAIL_SECONDS,
    SAMPLING_RULES,
    SamplePlan,
    check_sampling,
    recording_plan,
    sample_plan,
    segment_count,
    segment_timestamps,
)

__all__ = [
    "ALLOWED_DEMUXERS",
    "CANONICAL_EXTENSIONS",
    "INDEX_SOURCES",
    "MIN_TAIL_SECONDS",
    "SAMPLER_NAMES",
    "SAMPLING_RULES",
    "ContainerIndex",
    "SamplePlan",
    "DALISampler",
    "DecodeStats",
    "DecoderChoice",
    "FrameSampler",
    "PacketIndex",
    "PyAVSampler",
    "ReadPlan",
    "VideoInfo",
    "canonical_extension",
    "check_sampling",
    "container_index",
    "choose_decoder",
    "dali_available",
    "dali_unavailable_reason",
    "frame_index_at",
    "frame_times",
    "get_sampler",
    "index_packets",
    "packet_index_from_arrays",
    "plan_reads",
    "probe",
    "recording_plan",
    "sample_plan",
    "segment_count",
    "segment_timestamps",
    "video_sha256",
    "write_clip",
]
