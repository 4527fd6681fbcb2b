"""What a Kinesis API server takes from a plain client: boto3 PutRecords of
500 sample events per call from several threads, for a fixed time.

    python baseline.py ENDPOINT EVENTS_FILE SECONDS [THREADS]
"""
import sys
import threading
import time

import boto3

endpoint, events_file, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 4
client = boto3.client(
    "kinesis", endpoint_url=endpoint, region_name="us-east-1",
    aws_access_key_id="test", aws_secret_access_key="test",
)
stream = f"baseline-{int(time.time() * 1000)}"
client.create_stream(StreamName=stream, ShardCount=4)
client.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.2})
with open(events_file, "rb") as f:
    lines = [line.rstrip(b"\n") for line in f][:5000]
batches = [lines[i:i + 500] for i in range(0, len(lines), 500)]

stored = 0
lock = threading.Lock()
deadline = time.time() + seconds


def work(offset):
    global stored
    n = offset
    while time.time() < deadline:
        batch = batches[n % len(batches)]
        n += 1
        records = [{"Data": line, "PartitionKey": f"k{(n * 500 + i) % 2000}"} for i, line in enumerate(batch)]
        out = client.put_records(StreamName=stream, Records=records)
        with lock:
            stored += len(records) - out["FailedRecordCount"]


started = time.time()
workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(f"{stored / (time.time() - started):.0f}")
