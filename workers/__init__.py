"""hostd's worker runtime (the IIS w3wp role).

Entry point: `workers.runtime.run_worker(spec, ctl, queue, sem_fd, reroute, scoreboard)`,
called by the zygote in a freshly forked worker process; it returns the exit code.

- runtime.py: process main, the epoll loop, the pool queue, control messages, drain
- http.py:    a client connection: parsing (httptools), serving, responses, handoff
- wsgi.py:    wsgi.input / wsgi.errors / wsgi.file_wrapper and the response checks
- app.py:     loading the pool's application (directory, virtualenv, env, import)
"""
