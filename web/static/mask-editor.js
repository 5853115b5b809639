// The objects' masks over the photo, edited there: what a 3D job sends as `mask` / `masks`.
// app.js fetches the server's mask (POST /segment) and hands it here; the brush paints or
// erases, a box adds its rectangle, an uploaded image replaces the chosen object's mask, and
// "Add another object" makes a scene, each object in its own colour. Each mask is a canvas
// at the photo's full size, made binary after every edit, so the tint shown is what is sent.

// Tints told apart by name as well as colour (the list says each object's colour).
const COLOURS = [["red", [230, 25, 75]], ["blue", [67, 99, 216]], ["green", [60, 180, 75]],
  ["orange", [245, 130, 49]], ["purple", [145, 30, 180]], ["cyan", [66, 212, 244]],
  ["magenta", [240, 50, 230]], ["lime", [191, 239, 69]]];
const TINT = { chosen: 0.55, other: 0.35 };
const SHORTCUTS = { b: "paint", e: "erase", x: "box" };

function canvas(width, height) {
  return Object.assign(document.createElement("canvas"), { width, height });
}

// Pixels of an image that are the object, by the server's rule for a client's mask
// (pipelines/sam3d_parts/masks.py read_client_mask): the alpha channel where the image has
// transparency, else any non-zero colour.
function objectPixels(data) {
  let transparent = false;
  for (let i = 3; i < data.length && !transparent; i += 4) transparent = data[i] < 255;
  const inside = new Uint8Array(data.length / 4);
  for (let p = 0; p < inside.length; p++) {
    const i = p * 4;
    inside[p] = transparent ? data[i + 3] > 0 : (data[i] | data[i + 1] | data[i + 2]) > 0;
  }
  return inside;
}

export class MaskEditor {
  constructor(root, onChange) {
    this.root = root;
    this.onChange = onChange;
    this.view = root.querySelector("#mask-view");
    this.objects = [];  // { mask: canvas, name, rgb, area }
    this.chosen = 0;
    this.tool = "paint";
    this.maxObjects = 1;
    this.photo = null;
    this.serverMask = null;  // the object pixels /segment answered
    this.stroke = null;      // the pointer's gesture under way: { id, start, at }
    this.hover = null;
    this.frame = 0;
    for (const button of root.querySelectorAll("[data-tool]")) {
      button.addEventListener("click", () => this.useTool(button.dataset.tool));
    }
    root.querySelector("#mask-reset").addEventListener("click", () => {
      this.fill(this.serverMask);
      this.edited("reset to the server's mask");
    });
    root.querySelector("#mask-clear").addEventListener("click", () => {
      this.fill(null);
      this.edited("cleared");
    });
    root.querySelector("#mask-add").addEventListener("click", () => this.addObject());
    root.querySelector("#brush-size").addEventListener("input", (event) => {
      root.querySelector("#brush-size-shown").textContent = `${event.target.value} px`;
    });
    root.querySelector("#mask-file").addEventListener("change", (event) => {
      if (event.target.files[0]) this.upload(event.target.files[0]);
      event.target.value = "";
    });
    root.addEventListener("keydown", (event) => {
      const typing = event.target.matches("input:not([type=range]):not([type=file]), select");
      const tool = SHORTCUTS[event.key.toLowerCase()];
      if (!tool || typing || event.ctrlKey || event.metaKey || event.altKey) return;
      event.preventDefault();
      this.useTool(tool);
    });
    this.view.addEventListener("pointerdown", (event) => this.pointerDown(event));
    this.view.addEventListener("pointermove", (event) => this.pointerMove(event));
    this.view.addEventListener("pointerup", (event) => this.pointerUp(event));
    this.view.addEventListener("pointercancel", (event) => this.pointerUp(event));
    this.view.addEventListener("pointerleave", () => { this.hover = null; this.draw(); });
  }

  get active() {
    return this.objects.length > 0;
  }

  // The photo (what the job sends) and the server's mask for it (a decoded PNG, the size
  // the job sees the photo at): one object, the server's.
  show(photo, maskImage, maxObjects) {
    const { width, height } = maskImage;
    this.photo = photo;
    this.maxObjects = maxObjects;
    const reading = canvas(width, height).getContext("2d", { willReadFrequently: true });
    reading.drawImage(maskImage, 0, 0);
    this.serverMask = objectPixels(reading.getImageData(0, 0, width, height).data);
    Object.assign(this.view, { width, height });
    this.view.style.setProperty("--aspect", width / height);
    this.root.querySelector("#mask-edit").hidden = false;
    this.objects = [];
    this.chosen = 0;
    this.addObject(this.serverMask, false);
    this.say("");
  }

  hide() {
    this.objects = [];
    this.photo = null;
    this.root.querySelector("#mask-edit").hidden = true;
  }

  // The masks as sent: PNG data URLs at the photo's size, white (255) object on black (0),
  // opaque, which the server reads by colour (pipelines/sam3d_parts/masks.py read_client_mask).
  pngs() {
    return this.objects.map(({ mask }) => {
      const out = canvas(mask.width, mask.height);
      const context = out.getContext("2d");
      const pixels = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height);
      const { data } = pixels;
      for (let i = 0; i < data.length; i += 4) {
        const value = data[i + 3] ? 255 : 0;
        data[i] = data[i + 1] = data[i + 2] = value;
        data[i + 3] = 255;
      }
      context.putImageData(pixels, 0, 0);
      return out.toDataURL("image/png");
    });
  }

  // The objects that have no pixel: the server refuses an empty mask (a 400).
  emptyObjects() {
    return this.objects.filter((object) => object.area === 0).map((object) => object.name);
  }

  useTool(tool) {
    this.tool = tool;
    for (const button of this.root.querySelectorAll("[data-tool]")) {
      button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
    }
  }

  addObject(pixels = null, announce = true) {
    if (this.objects.length >= this.maxObjects) return;
    const used = this.objects.map((object) => object.colour);
    const [colour, rgb] = COLOURS.find(([name]) => !used.includes(name)) ||
      COLOURS[this.objects.length % COLOURS.length];
    const mask = canvas(this.view.width, this.view.height);
    mask.getContext("2d", { willReadFrequently: true });
    const name = `Object ${this.objects.length + 1}`;
    this.objects.push({ mask, rgb, colour, name, area: 0 });
    this.chosen = this.objects.length - 1;
    this.fill(pixels);
    this.changed(announce ? `${name} added: paint it or draw a box` : "");
  }

  removeObject(index) {
    const [removed] = this.objects.splice(index, 1);
    if (index < this.chosen || this.chosen === this.objects.length) this.chosen -= 1;
    this.changed(`${removed.name} removed`);
  }

  choose(index) {
    this.chosen = index;
    this.changed(`${this.objects[index].name} chosen: the tools change it`);
  }

  // Replace the chosen object's mask with `pixels` (one byte per pixel; null: empty).
  fill(pixels) {
    const { mask, rgb } = this.objects[this.chosen];
    const context = mask.getContext("2d");
    const image = context.createImageData(mask.width, mask.height);
    if (pixels) {
      for (let p = 0; p < pixels.length; p++) {
        if (!pixels[p]) continue;
        image.data.set(rgb, p * 4);
        image.data[p * 4 + 3] = 255;
      }
    }
    context.putImageData(image, 0, 0);
  }

  // After a brush stroke's anti-aliased edge: each pixel in (alpha >= 128) or out, so the
  // tint shows exactly the pixels sent.
  binarise(object) {
    const context = object.mask.getContext("2d");
    const image = context.getImageData(0, 0, object.mask.width, object.mask.height);
    const { data } = image;
    let area = 0;
    for (let i = 0; i < data.length; i += 4) {
      const inside = data[i + 3] >= 128;
      area += inside;
      if (inside) data.set(object.rgb, i);
      data[i + 3] = inside ? 255 : 0;
    }
    context.putImageData(image, 0, 0);
    object.area = area;
  }

  edited(what) {
    this.changed(`${this.objects[this.chosen].name} ${what}`);
  }

  async upload(file) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch {
      return this.say(`${file.name} is not an image this browser can read.`);
    }
    const { width, height } = this.view;
    const context = canvas(width, height).getContext("2d", { willReadFrequently: true });
    context.imageSmoothingEnabled = false;  // a 0/255 mask stays 0/255 when scaled
    context.drawImage(bitmap, 0, 0, width, height);
    const scaled = bitmap.width !== width || bitmap.height !== height
      ? ` (scaled from ${bitmap.width}x${bitmap.height} to the photo's ${width}x${height})` : "";
    this.fill(objectPixels(context.getImageData(0, 0, width, height).data));
    this.edited(`replaced by ${file.name}${scaled}`);
  }

  // -- the pointer: mouse, pen or touch ------------------------------------------------

  // The pointer's place in photo pixels, and photo pixels per CSS pixel (the canvas has
  // the photo's shape: --aspect).
  point(event) {
    const box = this.view.getBoundingClientRect();
    const scale = this.view.width / box.width;
    return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale, scale };
  }

  brushRadius(scale) {
    return (Number(this.root.querySelector("#brush-size").value) / 2) * scale;
  }

  pointerDown(event) {
    if (!this.active || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    this.view.setPointerCapture(event.pointerId);
    const at = this.point(event);
    this.stroke = { id: event.pointerId, start: at, at };
    if (this.tool !== "box") this.dab(null, at);
    this.draw();
  }

  pointerMove(event) {
    const at = this.point(event);
    this.hover = at;
    if (this.stroke?.id === event.pointerId) {
      if (this.tool !== "box") this.dab(this.stroke.at, at);
      this.stroke.at = at;
    }
    this.draw();
  }

  pointerUp(event) {
    if (this.stroke?.id !== event.pointerId) return;
    const { start, at } = this.stroke;
    this.stroke = null;
    if (this.tool === "box") {
      const context = this.objects[this.chosen].mask.getContext("2d");
      context.fillStyle = `rgb(${this.objects[this.chosen].rgb})`;
      context.fillRect(Math.min(start.x, at.x), Math.min(start.y, at.y),
                       Math.abs(at.x - start.x), Math.abs(at.y - start.y));
    }
    this.edited({ paint: "painted", erase: "erased", box: "given a box" }[this.tool]);
  }

  // One step of the brush: a disc at `to`, joined to the previous one.
  dab(from, to) {
    const { mask, rgb } = this.objects[this.chosen];
    const context = mask.getContext("2d");
    const radius = this.brushRadius(to.scale);
    context.globalCompositeOperation = this.tool === "erase" ? "destination-out" : "source-over";
    context.fillStyle = context.strokeStyle = `rgb(${rgb})`;
    context.beginPath();
    context.arc(to.x, to.y, radius, 0, 2 * Math.PI);
    context.fill();
    if (from) {
      context.lineWidth = radius * 2;
      context.lineCap = "round";
      context.beginPath();
      context.moveTo(from.x, from.y);
      context.lineTo(to.x, to.y);
      context.stroke();
    }
    context.globalCompositeOperation = "source-over";
  }

  // -- what is on screen -----------------------------------------------------------------

  changed(message) {
    if (this.objects.length) this.binarise(this.objects[this.chosen]);
    this.render();
    this.say(message);
    this.onChange();
  }

  say(message) {
    this.root.querySelector("#mask-status").textContent = message;
  }

  // The pointer's moves: at most one paint a frame.
  draw() {
    cancelAnimationFrame(this.frame);
    this.frame = requestAnimationFrame(() => this.paint());
  }

  // The photo, each object's tint (the chosen one stronger), the box being drawn and the
  // brush's outline.
  paint() {
    const context = this.view.getContext("2d");
    if (!this.photo) return;
    const { width, height } = this.view;
    context.globalAlpha = 1;
    context.clearRect(0, 0, width, height);  // a transparent photo hides nothing drawn before
    context.drawImage(this.photo, 0, 0, width, height);
    this.objects.forEach((object, index) => {
      context.globalAlpha = index === this.chosen ? TINT.chosen : TINT.other;
      context.drawImage(object.mask, 0, 0);
    });
    context.globalAlpha = 1;
    const scale = (this.stroke || this.hover)?.scale || 1;
    context.lineWidth = 2 * scale;
    if (this.stroke && this.tool === "box") {
      const { start, at } = this.stroke;
      context.setLineDash([6 * scale, 4 * scale]);
      context.strokeStyle = "#fff";
      context.strokeRect(start.x, start.y, at.x - start.x, at.y - start.y);
      context.setLineDash([]);
    } else if (this.hover && this.tool !== "box") {
      for (const [colour, grow] of [["#000", scale], ["#fff", 0]]) {
        context.strokeStyle = colour;
        context.beginPath();
        context.arc(this.hover.x, this.hover.y, this.brushRadius(scale) + grow, 0, 2 * Math.PI);
        context.stroke();
      }
    }
  }

  // The canvas, and the list of objects: each names its colour and share of the photo,
  // is chosen by its button, and (in a scene) removed by its own.
  render() {
    this.paint();
    const pixels = this.view.width * this.view.height;
    const list = this.root.querySelector("#mask-objects");
    list.replaceChildren(...this.objects.map((object, index) => {
      object.name = `Object ${index + 1}`;  // numbered anew after a removal
      const item = document.createElement("li");
      const choose = Object.assign(document.createElement("button"), {
        type: "button", className: "object",
        textContent: `${object.name} (${object.colour}, ${Math.round(100 * object.area / pixels)}% of the photo)`,
      });
      choose.style.setProperty("--swatch", `rgb(${object.rgb})`);
      choose.setAttribute("aria-pressed", String(index === this.chosen));
      choose.addEventListener("click", () => this.choose(index));
      item.append(choose);
      if (this.objects.length > 1) {
        const remove = Object.assign(document.createElement("button"), {
          type: "button", className: "remove", textContent: "Remove",
        });
        remove.setAttribute("aria-label", `Remove ${object.name}`);
        remove.addEventListener("click", () => this.removeObject(index));
        item.append(remove);
      }
      return item;
    }));
    const add = this.root.querySelector("#mask-add");
    add.disabled = this.objects.length >= this.maxObjects;
    add.title = add.disabled ? `A scene holds at most ${this.maxObjects} objects on this server` : "";
    this.root.querySelector("#mask-limit").textContent =
      `${this.objects.length} of at most ${this.maxObjects} objects`;
  }
}
