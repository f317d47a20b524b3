"""Benchmark the chat app's /ws against a minimal python-websockets server, and time GET /messages.

Run from the project root:

    python bench/run.py           # the full run, about 3 minutes
    python bench/run.py --quick   # a smoke run of about 15 seconds, with smaller numbers

It starts the app with `flask run` and bench/baseline_server.py, drives both
with the same load generator (bench/loadgen.py), taking turns, and prints what
each delivered, how fast, and how late. Then it starts two fresh copies of the
app, one holding 100 messages and one holding 100,000, and times
`GET /messages?since=<latest>` on each in turn.
"""

import argparse
import asyncio
import datetime
import http.client
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import websockets

import loadgen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

# (title, clients, messages, messages per second or None for "all at once")
SCENARIOS = {
    "full": [
        ("100 clients, 100 msg/s for 10 s", 100, 1000, 100),
        ("1000 clients, 20 msg/s for 10 s", 1000, 200, 20),
        ("burst: 200 messages to 500 clients", 500, 200, None),
    ],
    "quick": [
        ("10 clients, 100 msg/s for 2 s", 10, 200, 100),
        ("100 clients, 20 msg/s for 2 s", 100, 40, 20),
        ("burst: 200 messages to 50 clients", 50, 200, None),
    ],
}
ROUNDS = {"full": 3, "quick": 1}
STORED = {"full": (100, 100_000), "quick": (100, 10_000)}
GET_REQUESTS = {"full": 300, "quick": 50}
WARM_UP = 20  # GET requests per app not timed, so both have loaded their code paths

# `python -m flask` is the `flask` command of the Python running this script.
FLASK_RUN = [sys.executable, "-m", "flask", "run", "--port", "{port}"]

P99_SCENARIO, BURST_SCENARIO = 1, 2  # which scenarios the targets are about
TARGETS = {"p99": 1.2, "burst": 0.9, "get": 1.2}


def main():
    """Run every scenario against both servers, then the GET test, and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run with smaller numbers")
    parser.add_argument("--rounds", type=int, help="rounds of each scenario against each server")
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    rounds = args.rounds or ROUNDS[size]

    # A thousand clients need a thousand sockets here and a thousand in the app,
    # which inherits this limit because it is raised before the app starts.
    _, hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard_limit, hard_limit))

    print_machine()
    logs = tempfile.mkdtemp(prefix="chat-bench-")
    print(f"Server logs: {logs}")

    with Servers(logs) as servers:
        servers.start("ours", FLASK_RUN)
        servers.start("baseline", [sys.executable, os.path.join(BENCH, "baseline_server.py"), "--port", "{port}"])
        results = asyncio.run(run_scenarios(servers, SCENARIOS[size], rounds))

    small, large = STORED[size]
    with Servers(logs) as servers:
        for count in (small, large):
            servers.start(stored_name(count), FLASK_RUN)
        costs = time_get_since_latest(servers, (small, large), GET_REQUESTS[size])

    print_targets(results, SCENARIOS[size], costs, (small, large))
    print_generator_check(results, SCENARIOS[size])


async def run_scenarios(servers, scenarios, rounds):
    """Run each scenario `rounds` times against each server, taking turns; return {(scenario, server): [result]}."""
    results = {}
    for index, (title, clients, messages, rate) in enumerate(scenarios):
        print(f"\n== {title} ==")
        print(TABLE_HEADER)
        for round_number in range(1, rounds + 1):
            for name in ("ours", "baseline"):
                url = f"ws://127.0.0.1:{servers.port[name]}/ws"
                result = await loadgen.run_scenario(url, servers.pid(name), clients, messages, rate)
                results.setdefault((index, name), []).append(result)
                print(table_row(name, f"round {round_number}", result), flush=True)
        if rounds > 1:
            for name in ("ours", "baseline"):
                print(table_row(name, "median", median_result(results[(index, name)])))
    return results


TABLE_HEADER = (
    f"{'server':<9} {'':<8} {'delivered/expected':>26} {'deliveries/s':>13} {'frames/s':>9}"
    f" {'p50 ms':>8} {'p99 ms':>8} {'gen CPU':>8} {'srv CPU':>8} {'others':>7}"
)


def table_row(name, label, result):
    """Return one line of the results table."""
    delivered, expected = result["delivered"], result["expected"]
    share = f"{delivered:,}/{expected:,} ({delivered / expected:.0%})"
    if result.get("duplicates"):
        share += f" +{result['duplicates']} dup"
    return (
        f"{name:<9} {label:<8} {share:>26} {result['deliveries_per_s']:>13,.0f} {result['frames_per_s']:>9,.0f}"
        f" {result['p50_ms']:>8.1f} {result['p99_ms']:>8.1f}"
        f" {result['generator_cpu']:>8.0%} {result['server_cpu']:>8.0%} {result['others_cpu']:>7.0%}"
    )


def median_result(results):
    """Return the median of each number across rounds."""
    return {key: statistics.median(result[key] for result in results) for key in results[0]}


def time_get_since_latest(servers, stored_counts, requests):
    """Fill each app with its number of messages, then time GETs of the latest changes on each in turn.

    Taking turns, rather than timing one app and then the other, keeps any
    drift in the machine's speed out of the ratio. Returns {count: p50 seconds}.
    """
    latest = {}
    for count in stored_counts:
        started = time.monotonic()
        url = f"ws://127.0.0.1:{servers.port[stored_name(count)]}/ws"
        latest[count] = asyncio.run(loadgen.fill(url, count))
        print(f"\nStored {count:,} messages over one WebSocket in {time.monotonic() - started:.1f} s")

    print(f"\n== GET /messages?since=<latest>: {requests} requests each, a new connection each ==")
    durations = {count: [] for count in stored_counts}
    for turn in range(WARM_UP + requests):
        for count, (cursor, epoch) in latest.items():
            elapsed = time_one_get(servers.port[stored_name(count)], cursor, epoch)
            if turn >= WARM_UP:
                durations[count].append(elapsed)
    for count, values in durations.items():
        print(
            f"{count:>7,} messages stored: mean {statistics.mean(values) * 1000:.3f} ms,"
            f" p50 {statistics.median(values) * 1000:.3f} ms"
        )
    return {count: statistics.median(values) for count, values in durations.items()}


def stored_name(count):
    """Return the name of the app started to hold `count` messages."""
    return f"ours, {count} stored"


def time_one_get(port, cursor, epoch):
    """Return the seconds one GET /messages?since=cursor takes, connection included; check the answer."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", f"/messages?since={cursor}&epoch={epoch}")
    response = connection.getresponse()
    body = response.read()
    connection.close()
    elapsed = time.perf_counter() - started
    answer = json.loads(body)
    if response.status != 200 or answer["messages"] or answer["cursor"] != cursor:
        raise RuntimeError(f"GET since the latest cursor {cursor} answered {response.status}: {body[:200]!r}")
    return elapsed


def print_targets(results, scenarios, costs, stored_counts):
    """Print the issue's three ratios next to their targets."""
    small, large = stored_counts

    def ratio(index, key):
        ours = median_result(results[(index, "ours")])[key]
        baseline = median_result(results[(index, "baseline")])[key]
        return ours / baseline

    p99_title, burst_title = scenarios[P99_SCENARIO][0], scenarios[BURST_SCENARIO][0]
    rows = [
        (f"p99 latency, {p99_title}: ours / baseline", ratio(P99_SCENARIO, "p99_ms"), "<=", TARGETS["p99"]),
        (f"throughput, {burst_title}: ours / baseline", ratio(BURST_SCENARIO, "deliveries_per_s"), ">=", TARGETS["burst"]),
        (f"GET since latest, {large:,} / {small:,} stored (p50)", costs[large] / costs[small], "<=", TARGETS["get"]),
    ]
    print("\n== Targets (medians over rounds) ==")
    for label, value, sign, target in rows:
        met = value <= target if sign == "<=" else value >= target
        print(f"{label:<62} {value:>6.2f}   target {sign} {target}   {'met' if met else 'NOT met'}")


def print_generator_check(results, scenarios):
    """Print how busy the load generator was, and name the runs where it, not the server, set the pace."""
    print(
        "\nLoad generator: one asyncio process driving websockets' Sans-I/O protocol from asyncio"
        " callbacks (no task or queue per frame); its clients offer no compression."
    )
    print(
        "A server runs its Python code one thread at a time, so it needs about one core; the generator"
        " is one process, so it leaves the other core to the server. A run where gen CPU nears 100%"
        " while srv CPU does not was paced by the generator: its throughput is then a floor, and its"
        " latency a ceiling, for that server."
    )
    paced = [
        f"{scenarios[index][0]} / {name}: {sum(r['generator_cpu'] > 0.8 > r['server_cpu'] for r in runs)} of {len(runs)}"
        for (index, name), runs in results.items()
        if any(r["generator_cpu"] > 0.8 > r["server_cpu"] for r in runs)
    ]
    print("Runs paced by the generator (gen CPU > 80% > srv CPU): " + ("; ".join(paced) or "none"))
    title, clients = scenarios[P99_SCENARIO][:2]
    cost = statistics.median(r["generator_us_per_delivery"] for name in ("ours", "baseline") for r in results[(P99_SCENARIO, name)])
    print(
        f"In '{title}' the generator spent {cost:.0f} us of CPU per delivery, so reading one message"
        f" on all {clients} clients takes it about {cost * clients / 1000:.0f} ms: part of both servers' latency there."
    )


def print_machine():
    """Print what this ran on, so numbers from different machines are not compared by mistake."""
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    print(f"Chat benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(
        f"Machine: {os.cpu_count()} cores, {models[0] if models else 'unknown CPU'};"
        f" Python {platform.python_version()}, websockets {websockets.__version__};"
        f" load average {os.getloadavg()[0]:.1f}"
    )
    print("Columns: gen CPU, srv CPU and others are shares of one core used by the load generator,")
    print("the server, and every other process on the machine, from the first send to the last delivery.")


class Servers:
    """The server processes of one part of the run, each on a free port, all stopped on exit."""

    def __init__(self, logs):
        self.logs = logs
        self.port = {}
        self.processes = {}
        self.log_files = []

    def start(self, name, command):
        """Start `command` (with {port} filled in) from the project root and wait until it answers."""
        port = free_port()
        env = dict(os.environ, FLASK_MAX_MESSAGES="200000")
        env.pop("FLASK_DEBUG", None)  # debug mode would start a reloader and a second process
        log = open(os.path.join(self.logs, name.replace(" ", "_").replace(",", "") + ".log"), "w")
        self.log_files.append(log)
        command = [part.format(port=port) for part in command]
        self.processes[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.port[name] = port
        wait_until_listening(port, self.processes[name], log.name)

    def pid(self, name):
        """Return the process id of server `name`."""
        return self.processes[name].pid

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.log_files:
            log.close()


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_listening(port, process, log_path, timeout=30):
    """Wait until `port` accepts connections; fail if the process exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}; see {log_path}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not listen on port {port} within {timeout} s; see {log_path}")


if __name__ == "__main__":
    main()
