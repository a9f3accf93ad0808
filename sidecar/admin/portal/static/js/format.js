// Formatting values for display.

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, {
    year: "numeric",
    month: "short",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export function rate(stats) {
  if (!stats || stats.success_rate === null || stats.success_rate === undefined)
    return "No attempts yet";
  return `${Math.round(stats.success_rate * 100)} % (${stats.succeeded}/${stats.attempts})`;
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

/** The value of a datetime-local input as an ISO date-time (local time), or null. */
export function localToIso(value) {
  if (!value) return null;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date.toISOString();
}

/** A Date as the value of a datetime-local input. */
export function toLocalInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}
