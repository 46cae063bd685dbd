// A minimal DNS server for the router's discovery test: answers A queries
// from a file of lines "NAME ADDR ADDR ...", read again for every query so
// that the test can change a name's addresses while the router runs. Other
// names get NXDOMAIN, other query types an empty answer. Prints
// "dns on PORT" once it listens on 127.0.0.1 (a free UDP port).
// Node's own dgram only: no package to install.
import dgram from 'node:dgram';
import fs from 'node:fs';

const file = process.argv[2];
const sock = dgram.createSocket('udp4');

function parseName(buf, off) {
  const labels = [];
  while (off < buf.length && buf[off] !== 0) {
    const n = buf[off];
    labels.push(buf.subarray(off + 1, off + 1 + n).toString('latin1'));
    off += 1 + n;
  }
  return [labels.join('.').toLowerCase(), off + 1];
}

function lookup(name) {
  let text = '';
  try { text = fs.readFileSync(file, 'utf8'); } catch { return null; }
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length && f[0].toLowerCase() === name) return f.slice(1);
  }
  return null;
}

sock.on('message', (q, peer) => {
  if (q.length < 17) return;
  const [name, end] = parseName(q, 12);
  const qtype = q.readUInt16BE(end);
  const question = q.subarray(12, end + 4);
  const addrs = lookup(name);
  const answers = addrs && qtype === 1 ? addrs : [];
  const head = Buffer.alloc(12);
  head.writeUInt16BE(q.readUInt16BE(0), 0);
  head.writeUInt16BE(addrs ? 0x8180 : 0x8183, 2);
  head.writeUInt16BE(1, 4);
  head.writeUInt16BE(answers.length, 6);
  const rrs = answers.map((a) => {
    const rr = Buffer.alloc(16);
    rr.writeUInt16BE(0xc00c, 0); // the name: a pointer to the question's
    rr.writeUInt16BE(1, 2); // A
    rr.writeUInt16BE(1, 4); // IN
    rr.writeUInt32BE(1, 6); // TTL 1 s
    rr.writeUInt16BE(4, 10);
    a.split('.').forEach((o, i) => rr.writeUInt8(Number(o) & 255, 12 + i));
    return rr;
  });
  sock.send(Buffer.concat([head, question, ...rrs]), peer.port, peer.address);
});

sock.bind(0, '127.0.0.1', () => {
  console.log(`dns on ${sock.address().port}`);
});
