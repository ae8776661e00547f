fn main(){scoregen::init();}
