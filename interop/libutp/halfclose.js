#!/usr/bin/env node
// Half-close responder over libutp (utp-native): accept one connection, read
// it to EOF (the peer's FIN), and only then answer and close our direction.
// The answer is the lowercase hex SHA-256 of the request, a newline, then the
// request itself echoed back, so the requester checks both that we saw every
// byte and that data keeps flowing to it after it sent its FIN.
//   node halfclose.js -l HOST:PORT
// Exits 0 once the answer was written and the connection closed.
const crypto = require('crypto')
const utp = require('utp-native')

const args = process.argv.slice(2)
const target = args.find(a => a[0] !== '-')
if (!args.includes('-l') || !target) {
  console.error('usage: halfclose.js -l HOST:PORT')
  process.exit(2)
}
const [host, port] = target.split(':')
const socket = utp({ allowHalfOpen: true })
socket.listen(Number(port), host)
socket.once('connection', conn => {
  const chunks = []
  let got = 0
  conn.on('data', b => { chunks.push(b); got += b.length })
  conn.on('error', e => { console.error('halfclose: ' + e.message); process.exit(1) })
  conn.on('end', () => {
    const req = Buffer.concat(chunks, got)
    const digest = crypto.createHash('sha256').update(req).digest('hex')
    // See ucat.js: utp-native only marks an accepted connection writable on
    // its first read; an empty request would otherwise never be answered.
    if (!conn._connected) conn._onconnect()
    conn.write(digest + '\n')
    conn.end(req)
  })
  conn.on('close', () => setTimeout(() => process.exit(0), 300))
})
