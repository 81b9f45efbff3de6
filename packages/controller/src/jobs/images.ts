/**
 * Image names to layers, as agents need them in CreateInstance. The controller's image
 * store (images/catalog.ts) is the real catalog; the static one serves unit tests.
 */
export interface ImageCatalog {
  /**
   * The image's layers, bottom first; undefined when the image is unknown (or, with
   * `owner`, a private image of another user).
   */
  resolve(name: string, owner?: string): { name: string; layers: string[] } | undefined;
}

export class StaticImageCatalog implements ImageCatalog {
  private readonly byName: Map<string, string[]>;

  constructor(images: ReadonlyArray<{ name: string; layers: string[] }>) {
    this.byName = new Map(images.map((i) => [i.name, [...i.layers]]));
  }

  resolve(name: string): { name: string; layers: string[] } | undefined {
    const layers = this.byName.get(name);
    return layers && { name, layers: [...layers] };
  }
}
