"""The benchmark: what keeping every answer in Postgres costs, next to a no-database baseline.

`scripts/bench` (`python -m benchmarks.run`) starts everything on 127.0.0.1, measures,
prints one table and writes the results as JSON. One module per job:

    wire       a minimal HTTP/1.1 + SSE client on raw gevent sockets (cheap at 400 streams)
    baseline   the no-persistence baseline: litellm streamed straight to SSE, under gunicorn
    services   the processes: private Postgres, fake LLM, chatsvc and baseline instances
    meter      CPU of process trees (psutil), latency percentiles
    load       the clients: answers followed over SSE, idle subscribers, what they measured
    context    the parameters, the running services, the database counters
    loadrun    load runs over a steady window, and the ladder of stream counts
    phases     WAL per answer, idle subscribers, takeover after SIGKILL
    profile    py-spy on a worker, summarised by self time
    report     the machine, the table, the JSON
    run        command line and orchestration
    soak       --soak: a steady mix of answers, reconnects and cancels for minutes
    footprint  the soak's readings of every process, and its growth verdict
"""
