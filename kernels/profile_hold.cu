// Profiler gate (qprof.profile.timing_events): holds the stream until the host has queued a whole op.
//
// hold_until: one thread spins until *flag >= value (a host-mapped page-locked word the host writes
// after it queued the op's last event) or until max_ns of %globaltimer have passed. The timeout keeps
// an op that synchronizes inside itself (the host then waits for the stream, and the stream for the
// host) from deadlocking: the GPU goes on by itself and the profiler notes that op as not gated.
// Launch: grid 1, block 1, on the stream the op runs on, right before the op's start event.

extern "C" __global__ void hold_until(const volatile unsigned int* flag, unsigned int value,
                                      unsigned long long max_ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    while (*flag < value) {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t - t0 >= max_ns) return;
        __nanosleep(256);
    }
}
