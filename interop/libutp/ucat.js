#!/usr/bin/env node
// netcat over libutp (utp-native bundles libutp's C code), with half-close:
// stdin EOF sends FIN, the peer's data keeps flowing to stdout; exits 0 once
// both directions are finished.
//   node ucat.js -l HOST:PORT    listen for one connection
//   node ucat.js HOST:PORT       connect
const utp = require('utp-native')

// The error libutp itself reports (ECONNRESET for a peer's RESET), whatever
// error node's stream machinery emits first.
const Connection = require('utp-native/lib/connection.js')
const onerror = Connection.prototype._onerror
Connection.prototype._onerror = function (status) {
  const names = ['UTP_ECONNREFUSED', 'UTP_ECONNRESET', 'UTP_ETIMEDOUT']
  console.error('ucat: libutp error ' + (names[status] || status))
  return onerror.call(this, status)
}

const args = process.argv.slice(2)
const listen = args.includes('-l')
const target = args.find(a => a[0] !== '-')
if (!target) {
  console.error('usage: ucat.js [-l] HOST:PORT')
  process.exit(2)
}
const [host, port] = target.split(':')
const socket = utp({ allowHalfOpen: true })
let finished = 0
function done () {
  ++finished
}
function run (conn) {
  process.stdin.pipe(conn)
  process.stdin.on('end', done)
  conn.pipe(process.stdout)
  conn.on('end', () => {
    // utp-native only starts writing on an accepted connection once it has
    // read data (its 'connect' is emitted from the first read). A peer that
    // sends nothing but FIN would leave our writes queued forever, so flush
    // them here: libutp itself is CONNECTED once it has seen DATA or FIN.
    if (!conn._connected) conn._onconnect()
    done()
  })
  // Every error is printed before the exit: a reset destroys the stream,
  // and a write from stdin after that can report itself first.
  conn.on('error', e => {
    console.error('ucat: ' + e.message)
    setImmediate(() => process.exit(1))
  })
  // 'close' comes once libutp destroyed the socket: after both FINs, with our
  // FIN (and so all our data) acknowledged. Exiting earlier could drop data
  // libutp still holds unsent or unacked.
  conn.on('close', () => {
    if (finished === 2) setTimeout(() => process.exit(0), 100)
    else { console.error('ucat: connection closed before both directions finished'); process.exit(1) }
  })
}
if (listen) {
  socket.listen(Number(port), host)
  socket.once('connection', run)
} else {
  run(socket.connect(Number(port), host))
}
