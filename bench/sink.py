"""An idle TCP target for bench/run: accepts connections, discards whatever
arrives, never writes, keeps every connection open until the peer closes.

    python3 sink.py PORT
"""

import asyncio
import sys


class Sink(asyncio.Protocol):
    def data_received(self, data):
        pass


async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
