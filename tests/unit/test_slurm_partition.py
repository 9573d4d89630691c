"""A partition's limits and nodes parsed from Slurm's own text, a request checked against them, and the
unset resources sized from them: pure functions on captured output, no cluster needed."""

from __future__ import annotations

import pytest

from qdgap.core.common.errors import QdgapError
from qdgap.core.workflow import slurm_partition as sp

# `scontrol --all --oneliner show partition` on the CI cluster (.ci/slurm-up.sh, Slurm 22.05.8), with a second
# partition made by `scontrol create PartitionName=short Nodes=localhost MaxTime=10`.
SCONTROL = (
    "PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=localhost PriorityJobFactor=1 "
    "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
    "TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=21694M,node=1,billing=2\n"
    "PartitionName=short AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=00:10:00 MinNodes=1 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=localhost PriorityJobFactor=1 "
    "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
    "TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=21694M,node=1,billing=2\n"
)
# `sinfo --noheader --Node --partition=debug --format=%N|%c|%m|%G|%t` there.
SINFO = "localhost|2|21694|(null)|idle\n"
# A GPU partition as a real cluster lists it: limits set, mixed nodes, one down.
GPU_SCONTROL = (
    "PartitionName=gpu AllowGroups=ALL AllowAccounts=chem,phys DenyAccounts=(null) Default=NO State=UP "
    "MaxTime=2-00:00:00 MaxCPUsPerNode=32 MaxMemPerNode=257000 Nodes=g[01-03]\n"
)
GPU_SINFO = (
    "g01|64|515000|gpu:a100:4(S:0-1)|mix\n"
    "g02|64|515000|gpu:a100:4(S:0-1)|alloc\n"
    "g03|128|1030000|gpu:h100:8(S:0,1),shard:16|down*\n"
)


def _debug(**changes) -> sp.Partition:
    part = sp.parse_partitions(SCONTROL)[0]
    return sp.Partition(**{**part.__dict__, "nodes": tuple(sp.parse_nodes(SINFO)), **changes})


def _gpu() -> sp.Partition:
    part = sp.parse_partitions(GPU_SCONTROL)[0]
    return sp.Partition(**{**part.__dict__, "nodes": tuple(sp.parse_nodes(GPU_SINFO))})


@pytest.mark.parametrize(
    "text, minutes",
    [
        ("UNLIMITED", None),
        ("INFINITE", None),
        ("30", 30),
        ("30:59", 30),
        ("00:10:00", 10),
        ("02:30:00", 150),
        ("1-00", 1440),
        ("2-00:00:00", 2880),
        ("1-02:03", 1563),
    ],
)
def test_parse_time_min_reads_every_slurm_form(text, minutes):
    assert sp.parse_time_min(text) == minutes


def test_parse_time_min_rejects_other_text():
    with pytest.raises(ValueError):
        sp.parse_time_min("ten minutes")


def test_parse_partitions_reads_limits_and_default():
    debug, short = sp.parse_partitions(SCONTROL)
    assert (debug.name, debug.default, debug.state) == ("debug", True, "UP")
    assert debug.max_time_min is None and debug.max_cpus_per_node is None and debug.max_mem_per_node_mb is None
    assert debug.allow_accounts is None and debug.deny_accounts == ()
    assert (short.name, short.default, short.max_time_min) == ("short", False, 10)
    gpu = sp.parse_partitions(GPU_SCONTROL)[0]
    assert (gpu.max_time_min, gpu.max_cpus_per_node, gpu.max_mem_per_node_mb) == (2880, 32, 257000)
    assert gpu.allow_accounts == ("chem", "phys") and gpu.deny_accounts == ()
    assert sp.parse_partitions("slurm_load_partitions error: Unable to contact slurm controller\n") == []


def test_parse_nodes_reads_cpus_memory_gpus_and_state():
    nodes = sp.parse_nodes(GPU_SINFO + "garbage line\n" + "g01|64|515000|(null)|mix\n")
    assert [(n.name, n.cpus, n.mem_mb, n.gpus) for n in nodes] == [
        ("g01", 64, 515000, 4),
        ("g02", 64, 515000, 4),
        ("g03", 128, 1030000, 8),
    ]
    assert [n.up for n in nodes] == [True, True, False]  # down* is not up
    assert sp.parse_nodes(SINFO)[0].gpus == 0


@pytest.mark.parametrize(
    "gres, gpus", [("(null)", 0), ("gpu:4", 4), ("gpu:a100:4(S:0-1)", 4), ("gpu:a100:2,gpu:v100:1", 3), ("gpu", 1)]
)
def test_parse_gpus(gres, gpus):
    assert sp.parse_gpus(gres) == gpus


def test_parse_accounts_only_a_list_of_names():
    assert sp.parse_accounts("chem\nphys\nchem\n") == ("chem", "phys")
    # sacctmgr without accounting says so in a sentence, with exit 0
    assert sp.parse_accounts("You are not running a supported accounting_storage plugin\n") is None
    assert sp.parse_accounts("") is None


# --------------------------------------------------------------------------
# Checks: one line naming the option, the value and the limit
# --------------------------------------------------------------------------
def _check(part, **request):
    kwargs = {"cpus": 1, "mem_gb": None, "gpus": 0, "time_min": 60, **request}
    with pytest.raises(QdgapError) as exc:
        sp.check_request(part, **kwargs)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_check_request_accepts_what_fits():
    sp.check_request(_debug(), cpus=2, mem_gb=21, gpus=0, time_min=10_000)
    sp.check_request(_gpu(), cpus=32, mem_gb=200, gpus=4, time_min=2880, account="chem")


def test_check_request_names_option_value_and_limit():
    assert _check(_debug(), cpus=64) == (
        "--cpus 64: no node of partition debug (1 node) has that many; the largest has 2 CPUs"
    )
    assert "--mem 40: no node of partition debug (1 node) has that much; the largest has 21.2 GB" in _check(
        _debug(), mem_gb=40
    )
    assert _check(_debug(), gpus=1) == "--gpus 1: partition debug (1 node) has no GPUs"
    short = sp.parse_partitions(SCONTROL)[1]
    assert _check(short, time_min=60).startswith("--time 60: over partition short's MaxTime of 10 min")
    gpu = _gpu()
    assert "--cpus 33: over partition gpu's MaxCPUsPerNode of 32" in _check(gpu, cpus=33)
    assert "--mem 300: over partition gpu's MaxMemPerNode of 251 GB" in _check(gpu, mem_gb=300)
    assert "--time 3000: over partition gpu's MaxTime of 2880 min (2-00:00:00)" in _check(gpu, time_min=3000)
    assert "--gpus 16: partition gpu (3 nodes) has at most 8 GPU(s) per node" in _check(gpu, gpus=16)
    assert "--account bio: partition gpu allows only accounts chem,phys" in _check(gpu, account="bio")
    assert "--account x: not one of your Slurm accounts (a, b)" in _check(_debug(), account="x", accounts=("a", "b"))
    assert "INACTIVE" in _check(_debug(state="INACTIVE"))


def test_check_request_wants_one_node_with_all_of_it():
    part = _debug(nodes=(sp.Node("fat", 2, 500_000, 0, "idle"), sp.Node("wide", 64, 8_000, 0, "idle")))
    assert (
        _check(part, cpus=64, mem_gb=100)
        == "--cpus 64 --mem 100: no one node of partition debug (2 nodes) has all of it at once"
    )


def test_check_request_without_nodes_checks_only_limits():
    sp.check_request(_debug(nodes=()), cpus=64, mem_gb=None, gpus=2, time_min=60)


# --------------------------------------------------------------------------
# Sizing what was not given
# --------------------------------------------------------------------------
def test_size_request_fits_the_two_cpu_node():
    s = sp.size_request(_debug(), cpus=None, mem_gb=None, gpus=0, time_min=None, usual_time_min=120)
    assert (s.cpus, round(s.mem_gb * 1024), s.time_min) == (2, 21694, 120)
    assert s.chosen == ("--cpus", "--mem", "--time")
    assert s.line == (
        "Slurm partition debug: its largest node localhost has 2 CPUs, 21.2 GB, MaxTime unlimited; "
        "not given, so chose --cpus 2 --mem 21.2 --time 120 per task"
    )
    sp.check_request(_debug(), cpus=s.cpus, mem_gb=s.mem_gb, gpus=0, time_min=s.time_min)  # what it chose fits


def test_size_request_caps_time_at_maxtime_and_keeps_what_was_given():
    short = _debug(name="short", max_time_min=10)
    s = sp.size_request(short, cpus=1, mem_gb=2, gpus=0, time_min=None, usual_time_min=60)
    assert (s.cpus, s.mem_gb, s.time_min, s.chosen) == (1, 2, 10, ("--time",))
    assert "chose --time 10 per task" in s.line and "MaxTime 10 min" in s.line
    given = sp.size_request(short, cpus=1, mem_gb=2, gpus=0, time_min=5, usual_time_min=60)
    assert given.chosen == () and given.line == ""


def test_size_request_takes_a_share_of_the_largest_up_node_that_holds_the_gpus():
    s = sp.size_request(_gpu(), cpus=None, mem_gb=None, gpus=4, time_min=None, usual_time_min=60)
    # g03 (128 CPUs, 8 GPUs) is down; g01 is the largest up node with 4 GPUs: 4 of its 64 CPUs, so 1/16 of its memory.
    assert s.cpus == 4 and round(s.mem_gb * 1024) == 515000 * 4 // 64 and s.time_min == 60
    assert "node g01 has 64 CPUs" in s.line
    sp.check_request(_gpu(), cpus=s.cpus, mem_gb=s.mem_gb, gpus=4, time_min=s.time_min)


def test_size_request_respects_per_node_and_per_cpu_memory_caps():
    part = _debug(max_cpus_per_node=1, max_mem_per_cpu_mb=4096)
    s = sp.size_request(part, cpus=None, mem_gb=None, gpus=0, time_min=None, usual_time_min=60)
    assert s.cpus == 1 and s.mem_gb == 4.0


def test_size_request_without_slurm_keeps_the_usual_values():
    s = sp.size_request(None, cpus=None, mem_gb=None, gpus=0, time_min=None, usual_time_min=120)
    assert (s.cpus, s.mem_gb, s.time_min, s.line) == (sp.USUAL_CPUS, None, 120, "")


def test_nodes_reserved_or_in_maintenance_count_as_up():
    states = {"resv": True, "maint": True, "mix-": True, "idle~": True, "drain": False, "drng": False, "down*": False}
    for state, up in states.items():
        assert sp.Node("n1", 2, 1000, 0, state).up is up, state
