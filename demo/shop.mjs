// The demo shop: a small store whose every page carries the Waymark tag, served first-party
// through the edge worker's prefix. Used by `cargo xtask demo` and by the end-to-end test.
//
// Pages: home, product list, product pages, cart, checkout (sends Order Completed), login
// (identify). The cart lives in localStorage; every ecommerce call follows Segment's spec.

export const PRODUCTS = [
  { id: 'p-100', name: 'Trail Runner Shoe', price: 89.0, category: 'Shoes' },
  { id: 'p-101', name: 'Merino Running Tee', price: 45.0, category: 'Tops' },
  { id: 'p-102', name: 'Waterproof Shell Jacket', price: 149.0, category: 'Jackets' },
  { id: 'p-103', name: 'Running Socks (3 pack)', price: 18.5, category: 'Accessories' },
  { id: 'p-104', name: 'Hydration Vest', price: 72.0, category: 'Accessories' },
  { id: 'p-105', name: 'Thermal Tights', price: 59.0, category: 'Bottoms' },
];

const esc = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

const money = (n) => `€${n.toFixed(2)}`;

/**
 * Renders one page, or returns null for an unknown path.
 * @param {string} path
 * @param {{ snippet: string }} opts  the tag's HTML (stub + loader) for <head>
 */
export function renderPage(path, opts) {
  const product = PRODUCTS.find((p) => path === `/products/${p.id}`);
  let title;
  let body;
  if (path === '/') {
    title = 'Waymark Outdoor';
    body = `<h1>Waymark Outdoor</h1>
<p>Gear for people who run in the rain. This is Waymark's demo shop: every page carries the tag,
served from this site's own <code>/wm/</code> path.</p>
<p><a id="shop-now" href="/products">Shop all products</a></p>
<h2>Popular</h2>${list(PRODUCTS.slice(0, 3))}`;
  } else if (path === '/products') {
    title = 'All products';
    body = `<h1>All products</h1>${list(PRODUCTS)}`;
  } else if (product) {
    title = product.name;
    body = `<article data-waymark-product="${esc(product.id)}">
<h1>${esc(product.name)}</h1>
<p class="price">${money(product.price)}</p>
<p>${esc(product.category)}. ${'A sturdy, well-made piece of kit that keeps going mile after mile. '.repeat(12)}</p>
<button id="add-to-cart" type="button">Add to cart</button>
<p id="added" hidden>Added. <a href="/cart">Go to cart</a></p>
</article>
<script>
  var P = ${JSON.stringify(product)};
  waymark('track', 'Product Viewed', { product_id: P.id, name: P.name, price: P.price, currency: 'EUR', category: P.category });
  document.getElementById('add-to-cart').addEventListener('click', function () {
    shop.add(P);
    waymark('track', 'Product Added', { product_id: P.id, name: P.name, price: P.price, quantity: 1, currency: 'EUR', cart_id: shop.cartId() });
    document.getElementById('added').hidden = false;
  });
</script>`;
  } else if (path === '/cart') {
    title = 'Your cart';
    body = `<h1>Your cart</h1><div id="cart"></div>
<p><a id="checkout" href="/checkout">Checkout</a></p>
<script>shop.renderCart(document.getElementById('cart'));</script>`;
  } else if (path === '/checkout') {
    title = 'Checkout';
    body = `<h1>Checkout</h1><div id="cart"></div>
<form id="checkout-form">
  <label>Email <input id="email" name="email" type="email" value="runner@example.com"></label>
  <button id="place-order" type="submit">Place order</button>
</form>
<p id="thanks" hidden>Thank you! Your order <span id="order-id"></span> is on its way.</p>
<script>
  shop.renderCart(document.getElementById('cart'));
  waymark('track', 'Checkout Started', { cart_id: shop.cartId(), products: shop.products(), currency: 'EUR' });
  document.getElementById('checkout-form').addEventListener('submit', function (e) {
    e.preventDefault();
    var items = shop.products();
    var total = items.reduce(function (s, p) { return s + p.price * p.quantity; }, 0);
    var orderId = 'o-' + Date.now().toString(36);
    waymark('track', 'Order Completed', { order_id: orderId, revenue: total, total: total, currency: 'EUR', products: items });
    shop.clear();
    document.getElementById('order-id').textContent = orderId;
    document.getElementById('thanks').hidden = false;
  });
</script>`;
  } else if (path === '/login') {
    title = 'Log in';
    body = `<h1>Log in</h1>
<form id="login-form">
  <label>Email <input id="login-email" name="email" type="email" value="ada@example.com"></label>
  <label>Name <input id="login-name" name="name" value="Ada"></label>
  <button id="login" type="submit">Log in</button>
</form>
<p id="welcome" hidden>Welcome back!</p>
<script>
  document.getElementById('login-form').addEventListener('submit', function (e) {
    e.preventDefault();
    var email = document.getElementById('login-email').value;
    var name = document.getElementById('login-name').value;
    // The user id is the email here; a real shop would use its customer id.
    waymark('identify', email, { email: email, name: name });
    document.getElementById('welcome').hidden = false;
  });
</script>`;
  } else {
    return null;
  }
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)} · Waymark Outdoor</title>
${opts.snippet}
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 0 auto; padding: 1rem; color: #1d2a33; }
  nav a { margin-right: 1rem; } ul.products { list-style: none; padding: 0; display: grid; grid-template-columns: repeat(auto-fill, minmax(14rem, 1fr)); gap: 1rem; }
  ul.products li { border: 1px solid #d5dde3; border-radius: 8px; padding: 1rem; } .price { font-weight: 600; }
  button { font: inherit; padding: .4rem 1rem; } label { display: block; margin: .5rem 0; }
</style>
<script>
  // The shop's own cart, in localStorage.
  var shop = {
    key: 'demo-shop-cart',
    items: function () { try { return JSON.parse(localStorage.getItem(this.key) || '[]'); } catch (e) { return []; } },
    save: function (items) { try { localStorage.setItem(this.key, JSON.stringify(items)); } catch (e) {} },
    add: function (p) { var items = this.items(); var it = items.find(function (i) { return i.id === p.id; });
      if (it) it.quantity += 1; else items.push({ id: p.id, name: p.name, price: p.price, quantity: 1 }); this.save(items); },
    clear: function () { this.save([]); try { localStorage.removeItem('demo-shop-cart-id'); } catch (e) {} },
    cartId: function () { try { var id = localStorage.getItem('demo-shop-cart-id');
      if (!id) { id = 'c-' + Math.random().toString(36).slice(2, 10); localStorage.setItem('demo-shop-cart-id', id); } return id; } catch (e) { return 'c-none'; } },
    products: function () { return this.items().map(function (i) { return { product_id: i.id, name: i.name, price: i.price, quantity: i.quantity }; }); },
    renderCart: function (el) { var items = this.items();
      el.innerHTML = items.length ? '<ul>' + items.map(function (i) { return '<li>' + i.quantity + ' × ' + i.name + ' · €' + (i.price * i.quantity).toFixed(2) + '</li>'; }).join('') + '</ul>' : '<p>Your cart is empty.</p>'; }
  };
</script>
</head>
<body>
<nav><a href="/">Home</a><a href="/products">Products</a><a href="/cart">Cart</a><a href="/login">Log in</a></nav>
<main>
${body}
</main>
</body>
</html>
`;
}

function list(products) {
  return `<ul class="products">${products
    .map(
      (p) => `<li><a class="product-link" href="/products/${esc(p.id)}">${esc(p.name)}</a><div class="price">${money(p.price)}</div></li>`,
    )
    .join('')}</ul>`;
}
