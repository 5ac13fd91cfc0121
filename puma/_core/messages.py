"""The message kinds that travel between a runnable and its Runner.

Messages are plain tuples whose first item is one of these kinds: cheap to
build, cheap to pickle.

Parent to child (command channel):
    (STOP,)
    (CALL, call_id, method_name, args, kwargs, direct)   direct: answer on the reply pipe
    (INPUT_FAILED, buffer_key, SerializedError)   a publisher of an input died mid-value
    (WHERE,)                                        say what you are doing (answered at once, even mid-command)

Child to parent, control channel (never crowded by user traffic):
    (STARTED, pid, thread_name)   pid None: a process child (its pid is its handle's)
    (RESULT, call_id, ok, value_or_SerializedError)
    (ACTIVITY, text)   the answer to WHERE
    (FINISHED, SerializedError | None, stopped, lingering)   lingering: non-daemon threads left running

Child to parent, status channel (user statuses and log records):
    (STATUS, key, value)
    (LOG, record)
"""

STOP = 0
CALL = 1
STARTED = 2
RESULT = 3
FINISHED = 4
STATUS = 5
LOG = 6
INPUT_FAILED = 7
WHERE = 8
ACTIVITY = 9
