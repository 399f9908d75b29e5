"""Peak memory of a benchmark process; shared by the benchmark scripts (standard library only)."""

import resource


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (Linux ``VmHWM``).

    ``ru_maxrss`` is not used: Linux keeps it across ``execve``, so a worker started by a large parent would
    report the parent's memory.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
