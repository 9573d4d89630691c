"""What a Slurm partition offers, and whether a job array's request fits it.

Before an array is submitted (``workflow.slurm.submit``), the request is checked against what Slurm
says of the partition: its limits from ``scontrol show partition`` (MaxTime, MaxCPUsPerNode,
MaxMemPerNode, AllowAccounts, DenyAccounts, State; MaxMemPerCPU caps only the sized memory, since
Slurm meets it by giving a task more CPUs) and its nodes from ``sinfo``
(CPUs, memory, GPUs, state). A request that cannot fit is one line naming the option, the value and
the limit (``check_request``); resources the command left unset are sized from the partition, at
most what one node offers (``size_request``).

The parsing and the decisions are pure functions of Slurm's text and of numbers, tested on captured
output without a cluster; ``query`` is the one place that asks Slurm. Units: time in minutes, memory
in MB as Slurm counts it (``--mem 2`` is 2 GB = 2048 MB, Slurm's G), GB on the command line.
"""

from __future__ import annotations

import getpass
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from typing import Final

from qdgap.core.common.errors import QdgapError

log = logging.getLogger(__name__)

MB_PER_GB: Final[int] = 1024  # Slurm's G suffix: --mem=2G is 2048 MB
USUAL_CPUS: Final[int] = 4  # cores per task when --cpus is not given, cut to one node
_TIMEOUT_S: Final[int] = 60  # for one scontrol/sinfo/sacctmgr/squeue/sacct/scancel call
_UNLIMITED: Final[frozenset[str]] = frozenset({"UNLIMITED", "INFINITE", "NONE", "N/A", "(NULL)", ""})
# sinfo's short node states (a trailing *~#!%$@^- flags it) in which a node runs jobs or will once its
# jobs, reservation or maintenance end; down, drained and failing nodes are not up.
_UP_STATES: Final[frozenset[str]] = frozenset(
    {"idle", "mix", "mixed", "alloc", "allocated", "comp", "completing", "resv", "reserved", "maint", "plnd",
     "planned", "blocked"}
)  # fmt: skip


# --------------------------------------------------------------------------
# What Slurm says: parsing
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    """One node of a partition, as ``sinfo --Node`` lists it.

    Attributes:
        name: node name.
        cpus: CPU cores Slurm schedules on it.
        mem_mb: memory Slurm schedules on it (RealMemory), MB.
        gpus: GPUs among its generic resources (GRES ``gpu``).
        state: sinfo's short state (idle, mix, alloc, down*, drain, ...).
    """

    name: str
    cpus: int
    mem_mb: int
    gpus: int
    state: str

    @property
    def up(self) -> bool:
        """The node runs jobs now or will once its jobs end (not down, drained or failing)."""
        return self.state.rstrip("*~#!%$@^-+") in _UP_STATES and not self.state.endswith("*")


@dataclass(frozen=True)
class Partition:
    """A partition's limits, as ``scontrol show partition`` prints them, and its nodes.

    Attributes:
        name: partition name.
        default: the cluster's default partition (``Default=YES``).
        state: UP, DOWN, DRAIN or INACTIVE.
        max_time_min: MaxTime, minutes; None when unlimited.
        max_cpus_per_node: MaxCPUsPerNode; None when unlimited.
        max_mem_per_node_mb: MaxMemPerNode, MB; None when unlimited.
        max_mem_per_cpu_mb: MaxMemPerCPU, MB; None when unset.
        allow_accounts: AllowAccounts; None for ALL.
        deny_accounts: DenyAccounts; empty when unset.
        nodes: its nodes (``sinfo``); empty when sinfo did not answer.
    """

    name: str
    default: bool = False
    state: str = "UP"
    max_time_min: int | None = None
    max_cpus_per_node: int | None = None
    max_mem_per_node_mb: int | None = None
    max_mem_per_cpu_mb: int | None = None
    allow_accounts: tuple[str, ...] | None = None
    deny_accounts: tuple[str, ...] = ()
    nodes: tuple[Node, ...] = ()

    def to_json(self) -> dict[str, object]:
        """The limits a run folder records beside what was chosen from them."""
        return {
            "name": self.name,
            "max_time_min": self.max_time_min,
            "max_cpus_per_node": self.max_cpus_per_node,
            "max_mem_per_node_mb": self.max_mem_per_node_mb,
            "max_mem_per_cpu_mb": self.max_mem_per_cpu_mb,
            "nodes": [{"name": n.name, "cpus": n.cpus, "mem_mb": n.mem_mb, "gpus": n.gpus} for n in self.nodes],
        }


def parse_time_min(text: str) -> int | None:
    """A Slurm time limit -> whole minutes (seconds dropped); None when unlimited.

    Slurm writes ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` or ``D-HH:MM:SS``.

    Raises:
        ValueError: not a Slurm time.
    """
    text = text.strip()
    if text.upper() in _UNLIMITED:
        return None
    days, _, rest = text.rpartition("-")
    fields = [int(f) for f in rest.split(":")]  # ValueError on anything else
    if days:
        if len(fields) > 3:
            raise ValueError(f"not a Slurm time: {text!r}")
        hours, minutes, seconds = (fields + [0, 0])[:3]  # after "D-": hours, then minutes and seconds
        return int(days) * 1440 + hours * 60 + minutes + seconds // 60
    if len(fields) == 1:
        return fields[0]
    if len(fields) == 2:
        return fields[0] + fields[1] // 60
    if len(fields) == 3:
        return fields[0] * 60 + fields[1] + fields[2] // 60
    raise ValueError(f"not a Slurm time: {text!r}")


def _limit(text: str | None) -> int | None:
    if text is None or text.strip().upper() in _UNLIMITED:
        return None
    return int(text.strip())


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None or text.strip().upper() in ("ALL", "(NULL)", ""):
        return None
    return tuple(n for n in text.split(",") if n)


def parse_partitions(text: str) -> list[Partition]:
    """``scontrol show partition --oneliner`` (one ``Key=Value ...`` line per partition) -> partitions.

    Lines without ``PartitionName=`` are skipped; nodes are left empty (``parse_nodes`` fills them).
    """
    out = []
    for line in text.splitlines():
        fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if "PartitionName" not in fields:
            continue
        max_time = fields.get("MaxTime", "UNLIMITED")
        out.append(
            Partition(
                name=fields["PartitionName"],
                default=fields.get("Default", "NO").upper() == "YES",
                state=fields.get("State", "UP").upper(),
                max_time_min=parse_time_min(max_time),
                max_cpus_per_node=_limit(fields.get("MaxCPUsPerNode")),
                max_mem_per_node_mb=_limit(fields.get("MaxMemPerNode")),
                max_mem_per_cpu_mb=_limit(fields.get("MaxMemPerCPU")),
                allow_accounts=_names(fields.get("AllowAccounts")),
                deny_accounts=_names(fields.get("DenyAccounts")) or (),
            )
        )
    return out


def parse_gpus(gres: str) -> int:
    """GPUs in a node's GRES (``gpu:a100:4(S:0-1),shard:8`` -> 4; ``(null)`` -> 0)."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        count = parts[-1] if len(parts) > 1 else "1"
        total += int(count) if count.isdigit() else 1
    return total


def parse_nodes(text: str) -> list[Node]:
    """``sinfo --noheader --Node --format=%N|%c|%m|%G|%t`` -> nodes (one per name; malformed lines skipped)."""
    nodes: dict[str, Node] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        name, cpus, mem, gres, state = (f.strip() for f in fields)
        cpus, mem = cpus.rstrip("+"), mem.rstrip("+")
        if not (name and cpus.isdigit() and mem.isdigit()):
            continue
        nodes.setdefault(name, Node(name, int(cpus), int(mem), parse_gpus(gres), state))
    return list(nodes.values())


def parse_accounts(text: str) -> tuple[str, ...] | None:
    """``sacctmgr --noheader --parsable2 show assoc ... format=account`` -> the user's accounts.

    None when the text is not such a list (no accounting: sacctmgr then prints a sentence).
    """
    names = [ln.strip().rstrip("|") for ln in text.splitlines() if ln.strip()]
    if not names or not all(re.fullmatch(r"[\w.\-]+", n) for n in names):
        return None
    return tuple(dict.fromkeys(n.lower() for n in names))


# --------------------------------------------------------------------------
# Decisions: does a request fit, and what to ask for when it is not given
# --------------------------------------------------------------------------
def gb(mb: float) -> str:
    """MB -> ``"21.2 GB"`` (Slurm's G: 1024 MB)."""
    return f"{mb / MB_PER_GB:.1f}".rstrip("0").rstrip(".") + " GB"


def time_text(minutes: int) -> str:
    """Minutes -> ``"90 min"``, or ``"2-00:00:00"``-style days beyond a day, as Slurm's MaxTime reads."""
    if minutes < 1440:
        return f"{minutes} min"
    d, rest = divmod(minutes, 1440)
    return f"{minutes} min ({d}-{rest // 60:02d}:{rest % 60:02d}:00)"


def _fits(node: Node, cpus: int | None, mem_mb: int | None, gpus: int) -> bool:
    return (cpus is None or node.cpus >= cpus) and (mem_mb is None or node.mem_mb >= mem_mb) and node.gpus >= gpus


def check_request(
    part: Partition,
    *,
    cpus: int | None,
    mem_gb: float | None,
    gpus: int,
    time_min: int | None,
    account: str | None = None,
    accounts: tuple[str, ...] | None = None,
) -> None:
    """Refuse a request ``part`` can never run, before anything is submitted.

    Args:
        part: the partition, with its nodes (an empty node list skips the node checks).
        cpus: CPU cores per task; None when Slurm's default applies (1).
        mem_gb: memory per task, GB (Slurm's G); None when Slurm's default applies. Over MaxMemPerCPU x
            CPUs is not refused: Slurm then gives the task more CPUs, and the node checks still apply.
        gpus: GPUs per task.
        time_min: wall time per task, minutes; None when the partition's default applies.
        account: the account charged; None for the user's default.
        accounts: the user's accounts from Slurm's accounting; None when unknown.

    Raises:
        QdgapError: one line naming the option, its value and the limit it breaks.
    """
    p = part.name
    if part.state == "INACTIVE":
        raise QdgapError(f"--partition {p}: the partition is INACTIVE and takes no jobs; name another --partition")
    if account is not None:
        acct = account.lower()
        if part.allow_accounts is not None and acct not in {a.lower() for a in part.allow_accounts}:
            raise QdgapError(f"--account {account}: partition {p} allows only accounts {','.join(part.allow_accounts)}")
        if acct in {a.lower() for a in part.deny_accounts}:
            raise QdgapError(f"--account {account}: partition {p} denies it (DenyAccounts)")
        if accounts is not None and acct not in accounts:
            raise QdgapError(f"--account {account}: not one of your Slurm accounts ({', '.join(accounts)})")
    if time_min is not None and part.max_time_min is not None and time_min > part.max_time_min:
        raise QdgapError(
            f"--time {time_min}: over partition {p}'s MaxTime of {time_text(part.max_time_min)}; "
            f"ask for at most {part.max_time_min} or name another --partition"
        )
    if cpus is not None and part.max_cpus_per_node is not None and cpus > part.max_cpus_per_node:
        raise QdgapError(
            f"--cpus {cpus}: over partition {p}'s MaxCPUsPerNode of {part.max_cpus_per_node}; "
            f"ask for at most {part.max_cpus_per_node}"
        )
    mem_mb = None if mem_gb is None else int(round(mem_gb * MB_PER_GB))
    if mem_mb is not None and part.max_mem_per_node_mb is not None and mem_mb > part.max_mem_per_node_mb:
        raise QdgapError(
            f"--mem {mem_gb:g}: over partition {p}'s MaxMemPerNode of {gb(part.max_mem_per_node_mb)} "
            f"({part.max_mem_per_node_mb} MB)"
        )
    nodes = part.nodes
    if not nodes:
        return
    where = f"partition {p} ({len(nodes)} node{'s' if len(nodes) != 1 else ''})"
    if cpus is not None and not any(n.cpus >= cpus for n in nodes):
        big = max(nodes, key=lambda n: n.cpus)
        raise QdgapError(f"--cpus {cpus}: no node of {where} has that many; the largest has {big.cpus} CPUs")
    if mem_mb is not None and not any(n.mem_mb >= mem_mb for n in nodes):
        big = max(nodes, key=lambda n: n.mem_mb)
        raise QdgapError(
            f"--mem {mem_gb:g}: no node of {where} has that much; the largest has {gb(big.mem_mb)} ({big.mem_mb} MB)"
        )
    if gpus and not any(n.gpus >= gpus for n in nodes):
        most = max(n.gpus for n in nodes)
        have = "has no GPUs" if most == 0 else f"has at most {most} GPU(s) per node"
        raise QdgapError(f"--gpus {gpus}: {where} {have}")
    if not any(_fits(n, cpus, mem_mb, gpus) for n in nodes):
        asked = " ".join(
            f"{opt} {v}" for opt, v in (("--cpus", cpus), ("--mem", mem_gb), ("--gpus", gpus or None)) if v is not None
        )
        raise QdgapError(f"{asked}: no one node of {where} has all of it at once")


@dataclass(frozen=True)
class Sizing:
    """What a task asks for once the unset resources are sized from the partition.

    Attributes:
        cpus: CPU cores per task.
        mem_gb: memory per task, GB (Slurm's G); None leaves it to Slurm's default.
        time_min: wall time per task, minutes.
        chosen: the options qdgap chose (``--cpus``, ``--mem``, ``--time``), in that order.
        line: one line saying what was chosen and from what; "" when nothing was.
    """

    cpus: int
    mem_gb: float | None
    time_min: int
    chosen: tuple[str, ...]
    line: str


def size_request(
    part: Partition | None,
    *,
    cpus: int | None,
    mem_gb: float | None,
    gpus: int,
    time_min: int | None,
    usual_time_min: int,
    usual_cpus: int = USUAL_CPUS,
) -> Sizing:
    """Fill the resources not given (None) from what one node of ``part`` offers.

    CPUs: ``usual_cpus``, at most the node's CPUs and MaxCPUsPerNode. Memory: the node's memory in
    proportion to the CPUs taken, at most MaxMemPerNode and MaxMemPerCPU x CPUs. Time:
    ``usual_time_min``, at most MaxTime. The node is the largest up node (CPUs, then memory) that
    holds what was given (GPUs included); any such node if none is up, any node if none holds it.

    Args:
        part: the partition with its nodes; None when Slurm could not be asked (then the usual values,
            and memory left to Slurm).
        cpus, mem_gb, gpus, time_min: the request; None where not given.
        usual_time_min: what a task of this command usually needs, minutes.
        usual_cpus: cores a task usually uses.

    Returns:
        The request with every value set, and a line saying what was chosen.
    """
    chosen = []
    if cpus is None:
        chosen.append("--cpus")
    if mem_gb is None and part is not None and part.nodes:
        chosen.append("--mem")
    if time_min is None:
        chosen.append("--time")
    if part is None:
        return Sizing(
            cpus or usual_cpus, mem_gb, time_min or usual_time_min, tuple(c for c in chosen if c != "--mem"), ""
        )
    given_mb = None if mem_gb is None else int(round(mem_gb * MB_PER_GB))
    # Nodes that hold what was given; when none does, all of them, so that the check names what was given.
    candidates = [n for n in part.nodes if _fits(n, cpus, given_mb, gpus)] or list(part.nodes)
    up = [n for n in candidates if n.up]
    node = max(up or candidates, key=lambda n: (n.cpus, n.mem_mb), default=None)

    if cpus is None:
        cpus = usual_cpus
        if node is not None:
            cpus = min(cpus, node.cpus)
        if part.max_cpus_per_node is not None:
            cpus = min(cpus, part.max_cpus_per_node)
        cpus = max(cpus, 1)
    if mem_gb is None and node is not None:
        mb = node.mem_mb * min(cpus, node.cpus) // node.cpus
        for cap in (
            part.max_mem_per_node_mb,
            None if part.max_mem_per_cpu_mb is None else part.max_mem_per_cpu_mb * cpus,
        ):
            if cap is not None:
                mb = min(mb, cap)
        mem_gb = max(mb, 1) / MB_PER_GB
    if time_min is None:
        time_min = usual_time_min if part.max_time_min is None else max(1, min(usual_time_min, part.max_time_min))

    line = ""
    if chosen:
        values = {
            "--cpus": str(cpus),
            "--mem": f"{mem_gb:.1f}".rstrip("0").rstrip(".") if mem_gb else "",
            "--time": str(time_min),
        }
        what = " ".join(f"{c} {values[c]}" for c in chosen)
        if node is None:
            offer = "no node listed"
        else:
            offer = f"its largest node {node.name} has {node.cpus} CPUs, {gb(node.mem_mb)}"
            offer += f", {node.gpus} GPU(s)" if node.gpus else ""
        maxtime = "unlimited" if part.max_time_min is None else time_text(part.max_time_min)
        line = f"Slurm partition {part.name}: {offer}, MaxTime {maxtime}; not given, so chose {what} per task"
    return Sizing(cpus, mem_gb, time_min, tuple(chosen), line)


# --------------------------------------------------------------------------
# Asking Slurm
# --------------------------------------------------------------------------
def run_query(command: list[str]) -> subprocess.CompletedProcess[str] | None:
    """Run one Slurm query command; None (and a warning) when it cannot run or does not answer in time."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("%s: %s", command[0], exc)
        return None


def query_nodes(name: str) -> list[Node]:
    """The nodes of partition ``name`` (``sinfo``); [] when sinfo is missing or does not answer."""
    if shutil.which("sinfo") is None:
        return []
    proc = run_query(["sinfo", "--noheader", "--Node", f"--partition={name}", "--format=%N|%c|%m|%G|%t"])
    if proc is None or proc.returncode != 0:
        return []
    return parse_nodes(proc.stdout)


def query(name: str | None) -> Partition | None:
    """Partition ``name`` (the cluster's default if None) with its nodes, as Slurm describes it now.

    Returns:
        None when ``scontrol`` is missing or does not answer: nothing can be checked then, and sbatch
        has the last word.

    Raises:
        QdgapError: no such partition, or no default partition and none named.
    """
    if shutil.which("scontrol") is None:
        return None
    # --all: hidden partitions are partitions too.
    proc = run_query(["scontrol", "--all", "--oneliner", "show", "partition"])
    if proc is None or proc.returncode != 0:
        # debug, not info: a cluster whose scontrol is off is normal, and sbatch speaks next anyway.
        log.debug("scontrol show partition: %s", "no answer" if proc is None else proc.stderr.strip() or "failed")
        return None
    parts = parse_partitions(proc.stdout)
    if not parts:
        return None
    names = ", ".join(p.name for p in parts)
    if name is None:
        part = next((p for p in parts if p.default), None)
        if part is None:
            raise QdgapError(f"--partition: the cluster has no default partition; name one of {names}")
    else:
        part = next((p for p in parts if p.name == name), None)
        if part is None:
            raise QdgapError(f"--partition {name}: no such Slurm partition; the cluster has {names}")
    return replace(part, nodes=tuple(query_nodes(part.name)))


def query_accounts() -> tuple[str, ...] | None:
    """The user's accounts from Slurm's accounting; None where accounting is off or does not answer."""
    if shutil.which("sacctmgr") is None:
        return None
    user = getpass.getuser()
    proc = run_query(["sacctmgr", "--noheader", "--parsable2", "show", "assoc", f"where user={user}", "format=account"])
    if proc is None or proc.returncode != 0:
        return None
    return parse_accounts(proc.stdout)


def any_node_up(name: str | None) -> bool | None:
    """Whether any node of partition ``name`` (the default if None) is up; None when Slurm does not say."""
    try:
        part = query(name)
    except QdgapError:
        return None
    if part is None or not part.nodes:
        return None
    return any(n.up for n in part.nodes)
