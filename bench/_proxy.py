"""Delaying loopback proxies in their own process: `_proxy.py --delay S PORT...` prints one URL per port.

Runs until SIGTERM. A separate process, so forwarding bytes costs the measured orchestrator no CPU.
"""

import argparse
import asyncio
import signal
from contextlib import AsyncExitStack

from comfybatch.testing.proxy import TcpProxy


async def serve(ports: list[int], delay_s: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with AsyncExitStack() as stack:
        for port in ports:
            proxy = await stack.enter_async_context(TcpProxy(port, delay_s=delay_s))
            print(proxy.url, flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay", type=float, required=True, help="seconds each chunk waits, each way")
    parser.add_argument("ports", type=int, nargs="+")
    args = parser.parse_args()
    asyncio.run(serve(args.ports, args.delay))


if __name__ == "__main__":
    main()
