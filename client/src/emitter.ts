// A minimal typed event emitter. A throwing listener never breaks the client: its error
// is reported through the `error` event (or, for an `error` listener, the console).

type Fn = (...args: any[]) => void;

export class Emitter<Events extends { [K in keyof Events]: Fn }> {
  private listeners = new Map<keyof Events, Set<Fn>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, listener: Events[K]): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  /** Adds a listener that runs once. */
  once<K extends keyof Events>(event: K, listener: Events[K]): () => void {
    const off = this.on(event, ((...args: unknown[]) => {
      off();
      (listener as Fn)(...args);
    }) as Events[K]);
    return off;
  }

  off<K extends keyof Events>(event: K, listener: Events[K]): void {
    this.listeners.get(event)?.delete(listener);
  }

  protected emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of Array.from(set)) {
      try {
        fn(...args);
      } catch (err) {
        this.listenerFailed(String(event), err);
      }
    }
  }

  protected listenerFailed(_event: string, err: unknown): void {
    console.error(err);
  }
}
