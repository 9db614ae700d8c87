// Site search worker: Material for MkDocs' own worker, with one change to the query it receives.
//
// Material turns every typed word into a prefix query ("fastv" -> "fastv*"), so a word scores the same
// whether a page holds it exactly or only as the start of a longer word. Many summaries mention the
// baseline FastV, so "fastv" is a common term and FastViT and FastVID (rarer words) ranked above the
// paper named FastV. This worker adds, for each plain word, an exact-match clause boosted tenfold
// ("FastV" -> "FastV^10 FastV"; Material then appends the "*" to the second), so exact names come first
// and prefixes still match while one types.
//
// It sits beside Material's worker (so that worker's relative imports of lunr still resolve), receives
// that worker's file name as ?worker=..., and is wired in by site_src/overrides/main.html.
const QUERY = 2 // Material's SearchMessageType.QUERY
const PLAIN_WORD = /^[\p{L}\p{N}][\p{L}\p{N}._]*$/u

function boostExactWords(query) {
  if (/["+\-~^:*]/.test(query)) return query // the reader wrote lunr syntax: leave it alone
  return query.trim().split(/\s+/)
    .map(word => PLAIN_WORD.test(word) ? `${word}^10 ${word}` : word)
    .join(" ")
}

let forwarding = false
addEventListener("message", event => {
  if (forwarding || !event.data || event.data.type !== QUERY || typeof event.data.data !== "string") return
  event.stopImmediatePropagation()
  forwarding = true
  try {
    dispatchEvent(new MessageEvent("message", { data: { ...event.data, data: boostExactWords(event.data.data) } }))
  } finally {
    forwarding = false
  }
})

importScripts(new URL(location.href).searchParams.get("worker"))
