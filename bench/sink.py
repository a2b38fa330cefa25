"""An idle TCP target for bench/run: accepts connections, discards whatever
arrives, never writes, keeps every connection open until the peer closes.
With --echo it sends back whatever arrives instead (the forwards of the
audit section read their bytes back).

    python3 sink.py PORT [--echo]
"""

import asyncio
import sys


class Sink(asyncio.Protocol):
    def data_received(self, data):
        pass


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def main(port, protocol):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Echo if "--echo" in sys.argv[2:] else Sink))
