"""HTC-Grid's batch client shape: several processes each send jobs (vectors of tasks, one session
per job), then wait for every session and check each output. Only the import line is gridop's.

    AGENT_CONFIG_FILE=agent_config.json python examples/htcgrid/client.py --njobs 2 --job_size 20 --nthreads 2
"""

import argparse
import json
import logging
import os
import sys
import time
from multiprocessing import Process

from gridop.client.htcgrid import AWSConnector  # was: from api.connector import AWSConnector

WAIT_FOR_RESULTS_SEC = 3600


def run_jobs(n_jobs, job_size, worker_arguments, thread_id):
    with open(os.environ.get("AGENT_CONFIG_FILE", "/etc/agent/Agent_config.tfvars.json")) as f:
        agent_config = json.load(f)
    connector = AWSConnector()
    connector.init(agent_config, username=os.environ.get("USERNAME", ""), password=os.environ.get("PASSWORD", ""))
    connector.authenticate()
    task = {"worker_arguments": worker_arguments.split(" ")}
    expected = task["worker_arguments"][0]
    started = time.time()
    submissions = [connector.send([task] * job_size) for _ in range(n_jobs)]
    for sub in submissions:
        print(f"[thread {thread_id}] submitted session {sub['session_id']}", flush=True)
    for sub in submissions:
        results = connector.get_results(sub, timeout_sec=WAIT_FOR_RESULTS_SEC * 1000)
        for output in results["finished_OUTPUT"]:
            if output.rstrip() != expected:
                print(f"[thread {thread_id}] session {sub['session_id']}: expected {expected}, got {output}")
                sys.exit(1)
        print(f"[thread {thread_id}] session {sub['session_id']}: x{len(results['finished_OUTPUT'])} "
              f"verified in {time.time() - started:.2f} s", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser("multi-process client")
    parser.add_argument("--njobs", type=int, default=1)
    parser.add_argument("--job_size", type=int, default=1)
    parser.add_argument("--nthreads", type=int, default=1)
    parser.add_argument("--worker_arguments", default="10 1 1")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    procs = [Process(target=run_jobs, args=(args.njobs, args.job_size, args.worker_arguments, t))
             for t in range(args.nthreads)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(1)
    logging.warning("all threads completed, all results verified")
