// Profiler gate (qprof.profile.timing_events): holds the stream until the host has queued a whole op.
//
// hold_until: one thread spins until *flag >= value (a host-mapped page-locked word the host writes
// after it queued the op's last event) or until max_ns of %globaltimer have passed. The timeout keeps
// an op that synchronizes inside itself (the host then waits for the stream, and the stream for the
// host) from deadlocking: the GPU goes on by itself.
// outcome (host-mapped, may be null): the gate writes 2*value + timed_out into outcome[value % slots],
// so after the run the host knows for each gated op whether the gate held (and that it ran at all),
// rather than guessing it from host timers.
// empty_kernel: does nothing. The calibration (qprof.profile.event_calibration) measures what an event
// pair around one and two of them spans beyond their own (CUPTI) durations.
// Launch: grid 1, block 1, on the stream the op runs on, right before the op's start event.

extern "C" __global__ void hold_until(const volatile unsigned int* flag, unsigned int value,
                                      unsigned long long max_ns, unsigned long long* outcome,
                                      unsigned int slots) {
    unsigned long long t0, t;
    unsigned int timed_out = 0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    while (*flag < value) {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t - t0 >= max_ns) {
            timed_out = 1;
            break;
        }
        __nanosleep(256);
    }
    if (outcome != nullptr && slots > 0) {
        outcome[value % slots] = 2ull * value + timed_out;
    }
}

extern "C" __global__ void empty_kernel() {}
